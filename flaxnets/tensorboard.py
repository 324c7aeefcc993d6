"""A light TensorBoard scalar writer: event files without TensorFlow.

Writes the TFRecord-framed `Event` protocol buffers TensorBoard reads
(events.out.tfevents.*), encoding the few fields scalars need by hand: an event's
wall_time (1, double), step (2, int64), file_version (3, string), summary (5),
whose values carry a tag (1, string) and a simple_value (2, float), and session_log
(7), whose status (1) START tells TensorBoard to drop the earlier files' events from
that step on (a resumed run replays them).
"""
from __future__ import annotations

import os
import pathlib
import socket
import struct
import time

_CRC_TABLE = []
for _i in range(256):
  _c = _i
  for _ in range(8):
    _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
  _CRC_TABLE.append(_c)


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), as TFRecord framing uses."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
  out = bytearray()
  n &= (1 << 64) - 1
  while True:
    bits = n & 0x7F
    n >>= 7
    if n:
      out.append(bits | 0x80)
    else:
      out.append(bits)
      return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
  return _varint((number << 3) | wire_type) + payload


def _bytes_field(number: int, data: bytes) -> bytes:
  return _field(number, 2, _varint(len(data)) + data)


def _event(wall_time: float, step: int, *, file_version: str | None = None,
           summary: bytes | None = None, session_start: bool = False) -> bytes:
  msg = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
  if file_version is not None:
    msg += _bytes_field(3, file_version.encode())
  if summary is not None:
    msg += _bytes_field(5, summary)
  if session_start:
    msg += _bytes_field(7, _field(1, 0, _varint(1)))  # SessionLog.status = START
  return msg


class EventWriter:
  """`scalar(tag, value, step)`; one events file per writer, flushed on `flush()`."""

  def __init__(self, logdir: str | os.PathLike):
    self.logdir = pathlib.Path(logdir)
    self.logdir.mkdir(parents=True, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
    self.path = self.logdir / name
    self._file = open(self.path, "ab")
    self._write(_event(time.time(), 0, file_version="brain.Event:2"))
    self.flush()

  def _write(self, record: bytes) -> None:
    header = struct.pack("<Q", len(record))
    self._file.write(header + struct.pack("<I", _masked_crc(header)) + record +
                     struct.pack("<I", _masked_crc(record)))

  def scalar(self, tag: str, value: float, step: int) -> None:
    value_msg = _bytes_field(1, tag.encode()) + _field(2, 5, struct.pack("<f", float(value)))
    self._write(_event(time.time(), int(step), summary=_bytes_field(1, value_msg)))

  def session_start(self, step: int) -> None:
    """Mark a resume: TensorBoard discards events at steps >= `step` written before it."""
    self._write(_event(time.time(), int(step), session_start=True))

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    if not self._file.closed:
      self._file.close()
