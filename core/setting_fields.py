"""Dataclass fields read from the environment: a field names its contract setting (core/contract.py) once, where it
is declared, and takes the setting's default; `read_fields` builds the dataclass from an environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field, fields
from typing import TYPE_CHECKING, Any, TypeVar, cast

from .contract import REQUIRED, Setting

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T")
D = TypeVar("D", bound="DataclassInstance")

_SETTING = "setting"  # the field metadata key that holds the field's setting


def setting_field(setting: Setting[T]) -> T:
    """A dataclass field read from `setting`, defaulting to the setting's default (none where it is REQUIRED)."""
    metadata = {_SETTING: setting}
    if setting.default is REQUIRED:
        return cast(T, field(metadata=metadata))
    return cast(T, field(default=setting.default, metadata=metadata))


def read_fields(cls: type[D], env: Mapping[str, str], **given: Any) -> D:
    """`cls` with each of its `setting_field`s read from `env` (Setting.read) and its other fields from `given`."""
    read = {f.name: f.metadata[_SETTING].read(env) for f in fields(cls) if _SETTING in f.metadata}
    return cls(**read, **given)
