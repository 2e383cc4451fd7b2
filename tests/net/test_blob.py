"""Blob.clear_diff: lazily written zeros that read, view and accumulate as real zeros."""
import numpy as np

from caffe_unstable.net.blob import Blob


def test_cleared_diff_reads_as_zeros():
    b = Blob((2, 3))
    b.diff[...] = 5
    b.clear_diff()
    np.testing.assert_array_equal(b.diff, np.zeros((2, 3)))
    b.diff += 1                       # the zeros were written on that read
    np.testing.assert_array_equal(b.diff, np.ones((2, 3)))


def test_diff_to_accumulate_reports_zeros_once():
    b = Blob((4,))
    b.diff[...] = 2
    assert b.diff_to_accumulate()[1] is False
    b.clear_diff()
    diff, zero = b.diff_to_accumulate()
    assert zero and diff is b.diff_to_accumulate()[0]
    diff[...] = 3                     # the taker overwrote it
    assert b.diff_to_accumulate()[1] is False
    np.testing.assert_array_equal(b.diff, [3, 3, 3, 3])


def test_viewed_and_viewing_diffs_are_cleared_at_once():
    owner, view = Blob((2, 2)), Blob((4,))
    owner.diff[...] = 1
    view.share_diff(owner, (4,))
    owner.clear_diff()
    np.testing.assert_array_equal(view._diff, np.zeros(4))
    owner.diff[...] = 2
    view.clear_diff()
    np.testing.assert_array_equal(owner._diff, np.zeros((2, 2)))


def test_set_diff_and_reshape_after_clear():
    b = Blob((3,))
    b.diff[...] = 4
    b.clear_diff()
    b.diff = [1, 2, 3]
    np.testing.assert_array_equal(b.diff, [1, 2, 3])
    b.clear_diff()
    b.reshape(1, 3)                   # same count: still (lazily) zero
    np.testing.assert_array_equal(b.diff, np.zeros((1, 3)))
