"""The insert function's array parameters, encoded in one pass.

psycopg dumps a Python list through its generic list dumper: per list and per call
it looks for the element type, picks a sub-dumper, checks the dimensions and
dumps element by element, in Python -- for the twelve arrays of one call of
:mod:`.insert_function`, about a third of a write's client CPU. These arrays are
always one-dimensional, of one known type, without NULLs, so they are encoded
here straight into PostgreSQL's binary array format (``array_send``: a header,
then a length and the bytes of each element) and handed to psycopg as values of
types of their own whose dumpers pass the bytes through (psycopg's public
adapter API: ``Dumper`` and ``AdaptersMap.register_dumper``).

A text element with a NUL is refused before anything is sent, with psycopg's own
error (``DataError``: PostgreSQL text cannot hold NUL), as psycopg's text dumper
refuses it; a lone surrogate raises ``UnicodeEncodeError``, as there.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from uuid import UUID

import psycopg
from psycopg.adapt import Buffer, Dumper
from psycopg.pq import Format

UUID_OID, INT8_OID, TEXT_OID, BYTEA_OID = 2950, 20, 25, 17
NUL_REFUSED = "PostgreSQL text fields cannot contain NUL (0x00) bytes"

_head = struct.Struct("!iiIii").pack  # ndim 1, no NULLs, element oid, length, lower bound 1
_empty = struct.Struct("!iiI").pack  # ndim 0
_length = struct.Struct("!i").pack
_int8 = struct.Struct("!iq").pack
_UUID_LENGTH = _length(16)


class BinaryArray(bytes):
    """A one-dimensional array in PostgreSQL's binary format (of the element type of its class)."""

    element_oid = 0

    @classmethod
    def of(cls, elements: Sequence[bytes]) -> BinaryArray:
        """The array of these elements (each already in its type's binary format)."""
        if not elements:
            return cls(_empty(0, 0, cls.element_oid))
        parts = [_head(1, 0, cls.element_oid, len(elements), 1)]
        for element in elements:
            parts.append(_length(len(element)))
            parts.append(element)
        return cls(b"".join(parts))


class UuidArray(BinaryArray):
    element_oid = UUID_OID


class Int8Array(BinaryArray):
    element_oid = INT8_OID


class TextArray(BinaryArray):
    element_oid = TEXT_OID


class ByteaArray(BinaryArray):
    element_oid = BYTEA_OID


def uuid_array(values: Sequence[UUID]) -> UuidArray:
    if not values:
        return UuidArray(_empty(0, 0, UUID_OID))
    body = b"".join([_UUID_LENGTH + v.bytes for v in values])
    return UuidArray(_head(1, 0, UUID_OID, len(values), 1) + body)


def int8_array(values: Sequence[int]) -> Int8Array:
    if not values:
        return Int8Array(_empty(0, 0, INT8_OID))
    body = b"".join([_int8(8, v) for v in values])
    return Int8Array(_head(1, 0, INT8_OID, len(values), 1) + body)


def text_array(values: Sequence[str]) -> BinaryArray:
    for value in values:
        if "\x00" in value:
            raise psycopg.DataError(NUL_REFUSED)
    return TextArray.of([v.encode() for v in values])


def bytea_array(values: Sequence[bytes]) -> BinaryArray:
    return ByteaArray.of(values)


class _PassThrough(Dumper):
    format = Format.BINARY

    def dump(self, obj: Buffer) -> Buffer:
        return obj


def _dumper(array_oid: int) -> type[Dumper]:
    return type(f"ArrayDumper{array_oid}", (_PassThrough,), {"oid": array_oid})


for _cls, _array_oid in ((UuidArray, 2951), (Int8Array, 1016), (TextArray, 1009), (ByteaArray, 1001)):
    psycopg.adapters.register_dumper(_cls, _dumper(_array_oid))
