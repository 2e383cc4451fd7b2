"""PipeCNN's LRN coefficient table (hw_param.cl:99-102, USE_ROM; identical in UP-2018), as float32 bit patterns
(pipecnn.md §3.5). It approximates (1 + 2e-5 s)^-0.75, i.e. Caffe LRN with local_size 5, alpha 1e-4, beta 0.75,
k 1, piecewise linearly: segment 0 covers s < 2^13, segments 1-44 cover [2^13, 2^24) in four equal parts per
octave, entry 45 is the arrays' zero fill, which caffe_unstable also uses for every address past it (§10.7).
"""
import numpy as np

# The only LRN parameters the table implements (pipecnn.md §10.3).
LOCAL_SIZE, ALPHA, BETA, K = 5, 1e-4, 0.75, 1.0
LAST = 45


def _f32(bits):
    return np.array(bits, np.uint32).view(np.float32)


X_SAMPLE = _f32([
    0x3F800000, 0x46000000, 0x46200000, 0x46400000, 0x46600000, 0x46800000,
    0x46A00000, 0x46C00000, 0x46E00000, 0x47000000, 0x47200000, 0x47400000,
    0x47600000, 0x47800000, 0x47A00000, 0x47C00000, 0x47E00000, 0x48000000,
    0x48200000, 0x48400000, 0x48600000, 0x48800000, 0x48A00000, 0x48C00000,
    0x48E00000, 0x49000000, 0x49200000, 0x49400000, 0x49600000, 0x49800000,
    0x49A00000, 0x49C00000, 0x49E00000, 0x4A000000, 0x4A200000, 0x4A400000,
    0x4A600000, 0x4A800000, 0x4AA00000, 0x4AC00000, 0x4AE00000, 0x4B000000,
    0x4B200000, 0x4B400000, 0x4B600000, 0x4B800000,
])

H_INV = _f32([
    0x39000400, 0x3A000000, 0x3A000000, 0x3A000000, 0x3A000000, 0x39800000,
    0x39800000, 0x39800000, 0x39800000, 0x39000000, 0x39000000, 0x39000000,
    0x39000000, 0x38800000, 0x38800000, 0x38800000, 0x38800000, 0x38000000,
    0x38000000, 0x38000000, 0x38000000, 0x37800000, 0x37800000, 0x37800000,
    0x37800000, 0x37000000, 0x37000000, 0x37000000, 0x37000000, 0x36800000,
    0x36800000, 0x36800000, 0x36800000, 0x36000000, 0x36000000, 0x36000000,
    0x36000000, 0x35800000, 0x35800000, 0x35800000, 0x35800000, 0x35000000,
    0x35000000, 0x35000000, 0x35000000, 0x00000000,
])

COEF1 = _f32([
    0xBDDC3F76, 0xBCBB3777, 0xBCB06633, 0xBCA68858, 0xBC9D81A1, 0xBD116AEB,
    0xBD035764, 0xBCEE969B, 0xBCD9CB45, 0xBD3FCC52, 0xBD23C3EA, 0xBD0DACE7,
    0xBCF7DDCB, 0xBD4EE8C7, 0xBD265076, 0xBD08F9CC, 0xBCE60DA1, 0xBD36FDF0,
    0xBD0BAB91, 0xBCDD18F2, 0xBCB3E8F3, 0xBD0A2206, 0xBCCB5264, 0xBC9CAF4C,
    0xBC79D3F5, 0xBCBB9C30, 0xBC870B0A, 0xBC4CDEAB, 0xBC2167CF, 0xBC6F64B9,
    0xBC2A3317, 0xBBFFFAC3, 0xBBC86296, 0xBC139C6C, 0xBBD085DA, 0xBB9C1965,
    0xBB7394C5, 0xBBB2CF5A, 0xBB7BBF37, 0xBB3C04F0, 0xBB12721D, 0xBB56A121,
    0xBB16D4A7, 0xBAE10898, 0xBAAF200B, 0x00000000,
])

COEF0 = _f32([
    0x3F7F9167, 0x3F647343, 0x3F5E99D6, 0x3F5916A0, 0x3F53E25E, 0x3F4EEAC7,
    0x3F45D728, 0x3F3DA419, 0x3F363118, 0x3F2F4B57, 0x3F235701, 0x3F191FAC,
    0x3F104728, 0x3F086865, 0x3EF7138A, 0x3EE2568D, 0x3ED143E7, 0x3EC29F33,
    0x3EABE553, 0x3E9A833E, 0x3E8CBF3A, 0x3E814820, 0x3E604D45, 0x3E47084B,
    0x3E338951, 0x3E2399C8, 0x3E0C5D0D, 0x3DF72F2F, 0x3DDDB424, 0x3DC91B44,
    0x3DAB7931, 0x3D965896, 0x3D866E32, 0x3D7349AC, 0x3D4EC19A, 0x3D34E070,
    0x3D21781E, 0x3D11ECDE, 0x3CF79ADA, 0x3CD85D76, 0x3CC0FD84, 0x3CAE4CA4,
    0x3C93BF52, 0x3C81080F, 0x3C661666, 0x00000000,
])


def segment(s_int):
    """Table address of the integer sum of squares s (>= 0): 0 below 2^13, else 4 (e - 13) + j + 1 where e is the
    exponent and j the top two mantissa bits of float32(s) (exact: s < 2^26), capped at LAST."""
    s_int = np.asarray(s_int, np.int64)
    e = np.zeros(s_int.shape, np.int64)
    nz = s_int > 0
    e[nz] = np.floor(np.log2(s_int[nz].astype(np.float64))).astype(np.int64)
    # guard the float log against off-by-one at powers of two
    e += (np.int64(1) << (e + 1)) <= s_int
    e -= (np.int64(1) << e) > np.maximum(s_int, 1)
    j = (s_int >> np.maximum(e - 2, 0)) & 3
    addr = np.where(e < 13, 0, 4 * (e - 13) + j + 1)
    return np.minimum(addr, LAST)
