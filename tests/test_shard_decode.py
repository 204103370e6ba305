"""``decode_array``'s fast path (its own ``.npy`` header parse) gives what ``np.load`` gives, and leaves
every other member (other orders, empty, truncated, pickled, not ``.npy``) to ``np.load`` and its errors."""

from __future__ import annotations

import io

import numpy as np
import numpy.lib.format as npy_format
import pytest

from datamodules.schema import DataError
from datamodules.shards.format import _decode_fast, decode_array


def _npy(arr: np.ndarray, version: tuple[int, int] | None = None, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    if version is None:
        np.save(buf, arr, allow_pickle=allow_pickle)
    else:
        npy_format.write_array(buf, arr, version=version, allow_pickle=allow_pickle)
    return buf.getvalue()


@pytest.mark.parametrize("version", [None, (1, 0), (2, 0), (3, 0)])
@pytest.mark.parametrize("dtype", ["<f2", "<f4", ">f8", "|u1", "|i1", "<i8", "|b1"])
def test_decode_matches_np_load(version, dtype: str) -> None:
    for shape in [(), (5,), (3, 4), (2, 1, 3), (0,), (2, 0)]:
        for order in "CF":
            arr = np.asarray((np.arange(int(np.prod(shape))).reshape(shape) * 7 - 3).astype(dtype), order=order)
            data = _npy(arr, version) + b"trailing bytes are ignored, as np.load ignores them"
            ref, got = np.load(io.BytesIO(data), allow_pickle=False), decode_array(data)
            assert (got.dtype, got.shape, got.tobytes()) == (ref.dtype, ref.shape, ref.tobytes())
            assert got.flags.writeable and got.flags.c_contiguous == ref.flags.c_contiguous
            fast = _decode_fast(data)
            assert (fast is not None) == (arr.size > 0 and (arr.ndim < 2 or order == "C"))
            if fast is not None:
                assert not np.shares_memory(fast, np.frombuffer(data, np.uint8))  # a copy, not the member's bytes


def test_unusual_members_fail_as_np_load_says() -> None:
    data = _npy(np.ones((4, 16), "<f2"))
    for short in (data[:20], data[:-1], data[:9]):  # cut in the header, in the data
        assert _decode_fast(short) is None
        with pytest.raises(DataError, match="w: cannot decode member: not a valid .npy array"):
            decode_array(short, "w")
    objects = np.empty(1, dtype=object)
    objects[0] = {"payload": "runs code when unpickled"}
    with pytest.raises(DataError, match=r"not a numeric array \(it holds Python objects"):
        decode_array(_npy(objects, allow_pickle=True), "w")
    with pytest.raises(DataError, match=r"not a numeric array \(dtype complex64\)"):
        decode_array(_npy(np.ones(3, np.complex64)), "w")
    bad_version = data[:6] + b"\x04" + data[7:]
    with pytest.raises(DataError, match=r"cannot decode member.*format version"):
        decode_array(bad_version, "w")
