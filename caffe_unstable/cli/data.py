"""cu-data: Caffe's data tools (convert_mnist_data, convert_cifar_data, convert_imageset, compute_image_mean) with
their records, keys and log lines; caffe.md §6. Inputs may be gzip or xz compressed; outputs are LMDB only."""
import os

import click

from . import console_logger, run

PROCESSED_EVERY = 1000         # convert_imageset logs `Processed <n> files.` at every commit


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Build Caffe LMDBs from MNIST/CIFAR-10/image files and compute mean images, as Caffe's tools do.

    The databases are readable by BVLC Caffe unchanged: the same Datum records and keys.
    """


# -- mnist ---------------------------------------------------------------------------------------------------------

@main.command()
@click.argument("images", type=click.Path(dir_okay=False))
@click.argument("labels", type=click.Path(dir_okay=False))
@click.argument("out_lmdb", type=click.Path())
def mnist(images, labels, out_lmdb):
    """convert_mnist_data: idx IMAGES and LABELS files (e.g. train-images-idx3-ubyte[.gz]) -> OUT_LMDB.

    Keys %08d; Datum channels 1, height rows, width cols, raw pixel bytes, label.
    """
    run(convert_mnist, images, labels, out_lmdb, console_logger())


def convert_mnist(images_path, labels_path, out_lmdb, log):
    from ..data.convert import mnist_records
    from ..data.datasets import read_idx
    from ..errors import CaffeUnstableError

    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise CaffeUnstableError(images_path, "Incorrect image file magic: this is an idx label file (magic 2049); "
                                              "give the images file first, then the labels")
    if labels.ndim != 1:
        raise CaffeUnstableError(labels_path, "Incorrect label file magic: this is an idx image file (magic 2051); "
                                              "give the images file first, then the labels")
    records = mnist_records(images, labels, labels_path)
    with _writer(out_lmdb, log) as db:
        log.info(f"A total of {len(images)} items.", "convert_mnist_data.cpp:88")
        log.info(f"Rows: {images.shape[1]} Cols: {images.shape[2]}", "convert_mnist_data.cpp:89")
        for key, value in records:
            db.put(key, value)
        db.commit()
        log.info(f"Processed {db.count} files.", "convert_mnist_data.cpp:108")


def _writer(path, log):
    from ..io.lmdb import LMDBWriter

    db = LMDBWriter(path)
    log.info(f"Opened lmdb {path}", "db_lmdb.cpp:35")
    return db


# -- cifar10 -------------------------------------------------------------------------------------------------------

@main.command()
@click.argument("bins", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.argument("out_lmdb", type=click.Path())
def cifar10(bins, out_lmdb):
    """convert_cifar_data: CIFAR-10 binary-version files BIN... -> OUT_LMDB.

    Give the files explicitly (data_batch_1.bin ... or test_batch.bin, also .gz/.xz); records are numbered across
    them with keys %05d; Datum 3x32x32 in the files' RGB order, label.
    """
    run(convert_cifar, bins, out_lmdb, console_logger())


def convert_cifar(bins, out_lmdb, log):
    from ..data.convert import cifar_records
    from ..data.datasets import read_cifar_bin

    batches = [read_cifar_bin(path) for path in bins]    # read (and check) every file before creating the db
    with _writer(out_lmdb, log) as db:
        for i, (path, (images, _)) in enumerate(zip(bins, batches)):
            # convert_cifar_data logs "Training Batch <n>" for its fixed files; ours are the user's, so name them
            log.info(f"Batch {i + 1}: {path} ({len(images)} images)", "data.py:1")
        for key, value in cifar_records(batches):
            db.put(key, value)
        db.commit()
        log.info(f"Processed {db.count} files.", "data.py:1")


# -- imageset ------------------------------------------------------------------------------------------------------

@main.command()
@click.argument("root", type=click.Path())
@click.argument("listfile", metavar="LIST", type=click.Path(dir_okay=False))
@click.argument("out_lmdb", type=click.Path())
@click.option("--resize", nargs=2, type=int, default=None, metavar="H W",
              help="Resize every image to H x W (bilinear), only when both are > 0.")
@click.option("--resize_height", "--resize-height", "resize_height", type=int, default=0, hidden=True)
@click.option("--resize_width", "--resize-width", "resize_width", type=int, default=0, hidden=True)
@click.option("--shuffle", is_flag=True, help="Shuffle the list (with --seed) before converting.")
@click.option("--seed", type=int, default=None, help="Seed of --shuffle (default: fresh entropy, as Caffe).")
@click.option("--gray", is_flag=True, help="Read the images as single-channel gray.")
@click.option("--encoded", is_flag=True, help="Store the compressed image file in the Datum instead of pixels.")
@click.option("--encode-type", "--encode_type", "encode_type", default="", metavar="jpg|png",
              help="Encoding of --encoded Datums (default: the file's extension); implies --encoded.")
@click.option("--check-size", "--check_size", "check_size", is_flag=True,
              help="Fail unless every image has the size of the first.")
def imageset(root, listfile, out_lmdb, resize, resize_height, resize_width, shuffle, seed, gray, encoded,
             encode_type, check_size):
    """convert_imageset: images listed in LIST as "<path> <label>" lines, read from ROOT + path -> OUT_LMDB.

    Keys %08d_<path> (the line number; unreadable images are skipped but keep their number). Raw Datums hold
    the OpenCV BGR (or gray) pixels as C x H x W uint8.
    """
    if resize is not None:
        resize_height, resize_width = resize
    run(convert_imageset, root, listfile, out_lmdb, console_logger(), max(0, resize_height), max(0, resize_width),
        shuffle, seed, not gray, encoded, encode_type, check_size)


def convert_imageset(root, listfile, out_lmdb, log, height=0, width=0, shuffle=False, seed=None, is_color=True,
                     encoded=False, encode_type="", check_size=False):
    import numpy as np

    from ..data.convert import imageset_records, parse_image_list
    from ..errors import CaffeUnstableError

    try:
        with open(listfile, "rb") as f:
            lines = parse_image_list(f.read())
    except FileNotFoundError:
        raise CaffeUnstableError(listfile, "no such file (the image list)") from None
    if shuffle:
        log.info("Shuffling data", "convert_imageset.cpp:86")
        order = np.random.default_rng(seed).permutation(len(lines))
        lines = [lines[i] for i in order]
    log.info(f"A total of {len(lines)} images.", "convert_imageset.cpp:89")
    if encode_type and not encoded:
        log.info("encode_type specified, assuming encoded=true.", "convert_imageset.cpp:92")
    first_size = None
    with _writer(out_lmdb, log) as db:
        for _, key, value, size in imageset_records(root, lines, height, width, is_color, encoded, encode_type):
            path = os.fsdecode(key[9:])
            if value is None:
                log.error(f"Could not open or find file {root}{path}", "io.cpp:79")
                continue
            if check_size:
                if first_size is None:
                    first_size = size
                elif size != first_size:
                    raise CaffeUnstableError(f"{root}{path}", f"Check failed: data.size() == data_size ({size} vs. "
                                                              f"{first_size}) Incorrect data field size {size} "
                                                              "(--check-size: every image must have the size of the "
                                                              "first; add --resize H W)")
            if db.put(key, value):
                log.info(f"Processed {db.count} files.", "convert_imageset.cpp:147")
        pending = db.pending
        db.commit()
        if pending:
            log.info(f"Processed {db.count} files.", "convert_imageset.cpp:153")


# -- mean ----------------------------------------------------------------------------------------------------------

@main.command()
@click.argument("lmdb_path", metavar="LMDB", type=click.Path())
@click.argument("out", metavar="[OUT.binaryproto]", required=False, type=click.Path(dir_okay=False))
def mean(lmdb_path, out):
    """compute_image_mean: the mean image of every Datum in LMDB -> OUT.binaryproto (BlobProto 1 x C x H x W).

    Sums in float32 over all records, divides by the count; logs each channel's mean (the numbers for
    transform_param mean_value). All records must have one size.
    """
    run(compute_image_mean, lmdb_path, out, console_logger())


def compute_image_mean(lmdb_path, out, log):
    from ..data.convert import MeanAccumulator, add_datum, channel_means, mean_blob_proto
    from ..data.sources import LMDBReader
    from ..io.caffemodel import write_binary_proto
    from ..log import format_value
    from ..proto import caffe_pb2

    reader = LMDBReader(lmdb_path)
    try:
        log.info(f"Opened lmdb {lmdb_path}", "db_lmdb.cpp:35")
        if caffe_pb2.Datum.FromString(reader.peek()[1]).encoded:
            log.info("Decoding Datum", "compute_image_mean.cpp:57")
        log.info("Starting iteration", "compute_image_mean.cpp:70")
        acc = MeanAccumulator()
        while not reader.wraps:
            keys, values = reader.read(1)
            add_datum(acc, values[0], f"{lmdb_path}: record '{keys[0].decode('utf-8', 'replace')}'")
            if acc.count % 10000 == 0:
                log.info(f"Processed {acc.count} files.", "compute_image_mean.cpp:95")
    finally:
        reader.close()
    if acc.count % 10000:
        log.info(f"Processed {acc.count} files.", "compute_image_mean.cpp:101")
    mean_image = acc.mean()
    if out:
        log.info(f"Write to {out}", "compute_image_mean.cpp:108")
        write_binary_proto(out, mean_blob_proto(mean_image))
    log.info(f"Number of channels: {mean_image.shape[0]}", "compute_image_mean.cpp:114")
    for c, value in enumerate(channel_means(mean_image)):
        log.info(f"mean_value channel [{c}]: {format_value(value)}", "compute_image_mean.cpp:119")
