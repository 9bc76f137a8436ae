"""Reads topotrain's prepared datasets (``*.topo``, written by ``topotrain prep``)
with numpy alone, so that PyTorch (or any other) code can train on them.

    from topo_reader import TopoDataset

    dataset = TopoDataset("data/imagenet/val.topo")
    image, label = dataset[0]         # uint8 array (height, width, channels), int
    print(len(dataset), dataset.channels, dataset.class_names[label])
    dataset.labels                    # every record's label, without reading images

The file is opened with ``np.memmap``: records are read from the page cache
when indexed, never loaded all at once, and the object can be handed to
forked DataLoader workers. Records stored raw (``prep ... --storage raw``, and
Fashion-MNIST always) come back exactly as topotrain reads them. JPEG records
(``--storage jpeg`` or ``mixed``, the default for image folders and ImageNet)
are decoded with Pillow when it is installed; its decoder differs slightly
from topotrain's (a mean absolute difference under 2 levels in the tests).
Without Pillow they raise an error naming what to do.

With PyTorch (optional), e.g. with torchvision's transforms, which take
uint8 CHW tensors; images differ in size, so crop or resize them before
batching:

    import torch
    from torch.utils.data import DataLoader, Dataset
    from torchvision.transforms import v2

    class TopoTorchDataset(Dataset):
        def __init__(self, path, transform):
            self.topo = TopoDataset(path)
            self.transform = transform

        def __len__(self):
            return len(self.topo)

        def __getitem__(self, index):
            image, label = self.topo[index]
            image = torch.from_numpy(image).permute(2, 0, 1)  # HWC -> CHW
            return self.transform(image), label

    train = TopoTorchDataset("data/imagenet/train.topo", v2.Compose([
        v2.RandomResizedCrop(176, antialias=True), v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True)]))
    loader = DataLoader(train, batch_size=256, shuffle=True, num_workers=8)

Run as a script, it prints a file's summary: ``python3 topo_reader.py FILE.topo``.

The layout (version 1, little-endian; data-prep/src/format.rs is the
reference): a 128-byte header (magic ``TOPODSET``, version, channels, record
count, class count, index offset, class list offset and length, file length,
CRC-32 of index and class list, CRC-32 of the header), the records' payloads,
an index of 32 bytes per record (offset u64, length u32, label u32, width
u32, height u32, encoding u8: 0 raw HWC pixels, 1 JPEG) and the class names
as a JSON array.
"""

import io
import json
import sys
import zlib

import numpy as np

MAGIC = b"TOPODSET"
FORMAT_VERSION = 1
HEADER_LEN = 128
RAW, JPEG = 0, 1

HEADER_DTYPE = np.dtype(
    [
        ("magic", "S8"),
        ("version", "<u4"),
        ("channels", "<u4"),
        ("num_records", "<u8"),
        ("num_classes", "<u4"),
        ("reserved", "<u4"),
        ("index_offset", "<u8"),
        ("classes_offset", "<u8"),
        ("classes_len", "<u8"),
        ("file_len", "<u8"),
        ("index_checksum", "<u4"),
        ("reserved_tail", "V56"),
        ("header_checksum", "<u4"),
    ]
)
INDEX_DTYPE = np.dtype(
    [
        ("offset", "<u8"),
        ("len", "<u4"),
        ("label", "<u4"),
        ("width", "<u4"),
        ("height", "<u4"),
        ("encoding", "u1"),
        ("has_checksum", "u1"),  # 1: `checksum` is the payload's CRC-32
        ("reserved", "V2"),
        ("checksum", "<u4"),
    ]
)
assert HEADER_DTYPE.itemsize == HEADER_LEN and INDEX_DTYPE.itemsize == 32


class TopoFormatError(ValueError):
    """The file is not a complete, intact topotrain dataset."""


class TopoDataset:
    """A ``.topo`` file: ``len()``, ``dataset[i] -> (image, label)`` with
    ``image`` a uint8 array of shape (height, width, channels), and
    ``class_names``, ``labels``, ``channels``."""

    def __init__(self, path):
        self.path = str(path)
        try:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        except ValueError as error:  # numpy refuses to map an empty file
            raise TopoFormatError(f"{self.path} is empty, not a topotrain dataset") from error
        header = self._read_header()
        self.channels = int(header["channels"])
        index_start = int(header["index_offset"])
        classes_start = int(header["classes_offset"])
        num_records = int(header["num_records"])
        if zlib.crc32(self._map[index_start:]) != int(header["index_checksum"]):
            self._fail("index checksum mismatch")
        self._index = self._map[index_start:classes_start].view(INDEX_DTYPE)
        try:
            self.class_names = json.loads(bytes(self._map[classes_start:]).decode("utf-8"))
        except ValueError as error:
            self._fail(f"class list is not a JSON array of names: {error}")
        num_classes = int(header["num_classes"])
        if not isinstance(self.class_names, list) or len(self.class_names) != num_classes:
            self._fail("class count differs from the class list")
        assert len(self._index) == num_records
        self._check_index(index_start)

    def _fail(self, what):
        raise TopoFormatError(
            f"{self.path} is corrupt ({what}); prepare it again with topotrain prep"
        )

    def _read_header(self):
        if len(self._map) < len(MAGIC) or bytes(self._map[: len(MAGIC)]) != MAGIC:
            raise TopoFormatError(
                f"{self.path} is not a topotrain dataset file (it does not start with {MAGIC!r})"
            )
        if len(self._map) < HEADER_LEN:
            self._fail(f"{len(self._map)} bytes, shorter than the {HEADER_LEN}-byte header")
        header = self._map[:HEADER_LEN].view(HEADER_DTYPE)[0]
        if int(header["version"]) != FORMAT_VERSION:
            raise TopoFormatError(
                f"{self.path} has format version {int(header['version'])}; this reader "
                f"reads version {FORMAT_VERSION}: use the topo_reader.py of the topotrain "
                "that wrote it"
            )
        if zlib.crc32(self._map[: HEADER_LEN - 4]) != int(header["header_checksum"]):
            self._fail("header checksum mismatch")
        if int(header["file_len"]) != len(self._map):
            self._fail(
                f"{len(self._map)} bytes where the header says {int(header['file_len'])}: "
                "truncated or still being written"
            )
        if int(header["channels"]) not in (1, 3):
            self._fail(f"{int(header['channels'])} channels, expected 1 or 3")
        index_start = int(header["index_offset"])
        index_end = index_start + 32 * int(header["num_records"])
        classes_end = int(header["classes_offset"]) + int(header["classes_len"])
        in_order = (
            index_start >= HEADER_LEN
            and index_end == int(header["classes_offset"])
            and classes_end == int(header["file_len"])
        )
        if not in_order:
            self._fail("section offsets are inconsistent")
        return header

    def _check_index(self, data_end):
        index = self._index
        offset = index["offset"].astype(np.uint64)
        length = index["len"].astype(np.uint64)
        pixels = index["width"].astype(np.uint64) * index["height"].astype(np.uint64)
        raw_len = pixels * np.uint64(self.channels)
        problems = [
            (~np.isin(index["encoding"], (RAW, JPEG)), "unknown record encoding"),
            (
                (offset < HEADER_LEN) | (offset + length > data_end),
                "record lies outside the data region",
            ),
            (index["label"] >= len(self.class_names), "label is not below the class count"),
            ((index["width"] == 0) | (index["height"] == 0), "record has an empty image"),
            (
                (index["encoding"] == RAW) & (raw_len != length),
                "raw record length does not match its size",
            ),
        ]
        for bad, what in problems:
            if bad.any():
                self._fail(f"record {int(np.argmax(bad))}: {what}")

    def __len__(self):
        return len(self._index)

    @property
    def labels(self):
        """Every record's label, as an int64 array."""
        return self._index["label"].astype(np.int64)

    def _entry(self, index):
        if not -len(self) <= index < len(self):
            raise IndexError(f"record {index} of a dataset with {len(self)} records")
        return self._index[index]

    def record_bytes(self, index):
        """Record ``index``'s stored payload (raw pixels or a JPEG), uncopied."""
        entry = self._entry(index)
        start = int(entry["offset"])
        return self._map[start : start + int(entry["len"])]

    def __getitem__(self, index):
        entry = self._entry(index)
        shape = (int(entry["height"]), int(entry["width"]), self.channels)
        payload = self.record_bytes(index)
        if entry["has_checksum"] == 1 and zlib.crc32(payload) != int(entry["checksum"]):
            self._fail(f"record {index}: its bytes changed since it was written (CRC-32 mismatch)")
        if entry["encoding"] == RAW:
            image = np.array(payload).reshape(shape)
        else:
            image = self._decode_jpeg(index, payload, shape)
        return image, int(entry["label"])

    def _decode_jpeg(self, index, payload, shape):
        try:
            from PIL import Image
        except ImportError:
            raise RuntimeError(
                f"record {index} of {self.path} is stored as JPEG, and decoding it needs Pillow "
                "(pip install pillow, or apt-get install python3-pil); or prepare the data "
                "with topotrain prep ... --storage raw"
            ) from None
        with Image.open(io.BytesIO(payload.tobytes())) as decoded:
            image = np.asarray(decoded.convert("L" if self.channels == 1 else "RGB"))
        image = image.reshape(image.shape[0], image.shape[1], self.channels)
        if image.shape != shape:
            self._fail(
                f"record {index}: JPEG is {image.shape[1]}x{image.shape[0]} "
                f"but the index says {shape[1]}x{shape[0]}"
            )
        return image

    def __repr__(self):
        return (
            f"TopoDataset({self.path!r}: {len(self)} records, {self.channels} channel(s), "
            f"{len(self.class_names)} classes)"
        )


def main(paths):
    if not paths:
        print("usage: python3 topo_reader.py FILE.topo ...", file=sys.stderr)
        return 2
    for path in paths:
        try:
            dataset = TopoDataset(path)
        except (OSError, TopoFormatError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        encodings = np.bincount(dataset._index["encoding"], minlength=2)
        print(dataset)
        print(f"  raw records {encodings[RAW]}, JPEG records {encodings[JPEG]}")
        more = " ..." if len(dataset.class_names) > 10 else ""
        print(f"  classes: {', '.join(dataset.class_names[:10])}{more}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
