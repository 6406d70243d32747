"""`torch.distributed.checkpoint` (DCP) reading without arbitrary unpickling.

    dcp.load(blob, checkpoint_id=path, storage_reader=SafeReader(path), planner=SafePlanner())

DCP's own reader unpickles `.metadata` with plain `pickle.load`, and its load planner reads every non-tensor entry
(optimizer param groups, step counters) with `torch.load(weights_only=False)`: a planted file there runs code on
resume. SafeReader unpickles the metadata with an allow-list of DCP's metadata classes (anything else is refused
before it is called), and SafePlanner reads the non-tensor entries with `weights_only=True`. Tensor payloads are
already read by DCP with `weights_only=True`.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from posttrain.train.state_io import StateFileError

ALLOWED = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata",
        "TensorStorageMetadata",
        "TensorProperties",
        "ChunkStorageMetadata",
        "BytesStorageMetadata",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path"},
    "collections": {"OrderedDict"},
}


class MetadataUnpickler(pickle.Unpickler):
    """Resolves only DCP metadata classes, torch dtypes and paths; any other global is an error."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if name in ALLOWED.get(module, ()):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a checkpoint's metadata")


class SafeReader(FileSystemReader):
    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as f:
            try:
                metadata = MetadataUnpickler(f).load()
            except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as e:
                raise StateFileError(f"{path}: refused ({e})") from None
        if not isinstance(metadata, Metadata):
            raise StateFileError(f"{path}: not DCP metadata ({type(metadata).__name__})")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeBytes:
    """Mixin for a DCP load planner: non-tensor entries are read with `weights_only=True`."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            raise StateFileError(f"checkpoint entry {read_item.dest_index.fqn}: refused ({e})") from None
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._traverse import set_element  # what DefaultLoadPlanner uses

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


class SafePlanner(SafeBytes, DefaultLoadPlanner):
    """Loads into an existing state dict (resume)."""


class SafeWholePlanner(SafeBytes, _EmptyStateDictLoadPlanner):
    """Loads everything a checkpoint holds into an empty dict (offline consolidation)."""
