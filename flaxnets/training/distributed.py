"""Multi-host start-up: join a jax.distributed job, or fail fast naming the coordinator.

`flaxnets train --distributed` calls `initialize` before anything touches a device.
Each process then sees every device of the job (`jax.devices()`), feeds only its own
rows of each global batch (the pipeline slices by `jax.process_index()`), and only
process 0 prints and writes logs; every process takes part in checkpoint saves.

Why the pre-checks: in jax 0.10.2 a process that cannot reach the coordinator
(or a coordinator whose peers never register) is not given a Python exception: the
coordination client aborts the whole process (SIGABRT) after about twice
`initialization_timeout`, with a message that does not name the address. So a
process other than 0 first opens a TCP connection to the coordinator, retrying
until `timeout_s`, and raises DistributedInitError naming the address when it
cannot; process 0 first checks that it can listen on the coordinator's port.
"""
from __future__ import annotations

import errno
import math
import os
import socket
import sys
import time

ENV_ADDRESS = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


class DistributedInitError(RuntimeError):
  """The job cannot start: bad arguments or an unreachable coordinator (named)."""


def parse_address(address: str) -> tuple[str, int]:
  """'host:port' (or '[v6]:port') -> (host, port), with one clear error otherwise."""
  host, sep, port = address.rpartition(":")
  host = host.strip("[]")
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise DistributedInitError(f"coordinator address {address!r}: expected 'host:port' "
                               "with a port in 1..65535, e.g. '10.0.0.1:1234'")
  return host, int(port)


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  if value is None or value == "":
    return None
  try:
    return int(value)
  except ValueError:
    raise DistributedInitError(f"environment variable {name}={value!r}: expected an integer")


def wait_for_coordinator(address: str, timeout_s: float, interval_s: float = 0.25) -> None:
  """Retry a TCP connect to `address` until it succeeds or `timeout_s` has passed.

  Raises:
    DistributedInitError naming the address, the time waited and the last OS error.
  """
  host, port = parse_address(address)
  deadline = time.monotonic() + timeout_s
  last: OSError | None = None
  while True:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
      break
    try:
      with socket.create_connection((host, port), timeout=min(remaining, 2.0)):
        return
    except OSError as e:  # refused, unreachable, unresolvable: the coordinator may be late
      last = e
    time.sleep(min(interval_s, max(deadline - time.monotonic(), 0.0)))
  raise DistributedInitError(
      f"could not reach the coordinator at {address} within {timeout_s:g} s "
      f"({type(last).__name__}: {last}). Start process 0 with the same --coordinator, "
      "check the host and port, or raise --init_timeout.")


def _check_can_listen(address: str) -> None:
  """Process 0 hosts the coordinator: its port must be free on this machine."""
  host, port = parse_address(address)
  with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      s.bind(("", port))
    except OSError as e:
      if e.errno in (errno.EADDRINUSE, errno.EACCES):
        raise DistributedInitError(
            f"process 0 cannot host the coordinator at {address}: port {port} is "
            f"{'already in use' if e.errno == errno.EADDRINUSE else 'not allowed'} "
            f"({e.strerror}); choose another port") from e
      raise


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: float = 60.0) -> None:
  """Join (or host, as process 0) a multi-process JAX job.

  Arguments left None come from JAX's environment (JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES, JAX_PROCESS_ID) or its cluster auto-detection (SLURM, TPU
  pods, ...), exactly as `jax.distributed.initialize()` finds them.

  Args:
    coordinator: 'host:port' of process 0's coordination service.
    num_processes: processes in the job.
    process_id: this process's index in [0, num_processes).
    timeout_s: seconds to wait for the coordinator (and, inside JAX, for every
      process to register). A process other than 0 that cannot connect raises
      within about `timeout_s`.
  Raises:
    DistributedInitError: bad arguments, a busy coordinator port (process 0), or a
      coordinator not reachable in time (the message names the address).
  """
  if not timeout_s > 0:
    raise DistributedInitError(f"init_timeout={timeout_s!r}: expected a number of seconds > 0")
  address = coordinator or os.environ.get(ENV_ADDRESS) or None
  n = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
  pid = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
  if n is not None and n < 1:
    raise DistributedInitError(f"num_processes={n}: expected an integer >= 1")
  if pid is not None and (pid < 0 or (n is not None and pid >= n)):
    raise DistributedInitError(f"process_id={pid}: expected an integer in [0, "
                               f"{'num_processes' if n is None else n})")
  if address is not None:
    parse_address(address)
    if pid == 0:
      _check_can_listen(address)
    elif pid is not None:
      wait_for_coordinator(address, timeout_s)
  import jax
  if pid == 0:
    # If a peer never registers, JAX aborts this process with a message that names no
    # address; this line says beforehand what is being waited for.
    print(f"flaxnets: process 0 hosts the coordinator at {address}; waiting up to "
          f"{timeout_s:g} s for {'the other' if n is None else n - 1} process(es)",
          file=sys.stderr, flush=True)
  jax.distributed.initialize(address, n, pid,
                             initialization_timeout=max(1, math.ceil(timeout_s)))


# Settings a process may hold for itself: where its own disk keeps the data, checkpoints
# to start from and vocabularies (read by each process; checked there), and its display.
# Whether a path is given must still agree: it changes what the run does.
LOCAL_KEYS = ("progress", "dataset.path", "dataset.data_dir", "dataset.vocabulary",
              "init.workdir", "workdir")


def _settings(config, extra: dict) -> dict:
  """The dotted settings every process must share, as JSON values: numbers as floats (0
  and 0.0 are one setting), tuples as lists, local paths as whether they are given."""
  import json
  import numbers
  out = {}

  def plain(value):
    if isinstance(value, bool) or value is None or isinstance(value, str):
      return value
    if isinstance(value, numbers.Real):
      return float(value) + 0.0  # (-0.0 too)
    if isinstance(value, (list, tuple)):
      return [plain(v) for v in value]
    if isinstance(value, dict):
      return {str(k): plain(v) for k, v in value.items()}
    return repr(value)

  def walk(node, prefix):
    for key, value in node.items():
      name = f"{prefix}{key}"
      if isinstance(value, dict) and prefix + key != "optimizer.class_weights":
        walk(value, name + ".")
      elif name == "progress":
        continue
      elif name in LOCAL_KEYS:
        out[name] = "(a path)" if value else ""
      else:
        out[name] = plain(value)
  walk({**config.to_dict(), **extra}, "")
  return json.loads(json.dumps(out, sort_keys=True))


def check_same_config(config, extra: dict | None = None) -> None:
  """Every process of a run holds the same config and `extra` arguments (of train or
  lr_find), but for LOCAL_KEYS. A process with another model, batch size or learning rate
  compiles other programs, and the processes then wait in collectives that never match
  until JAX aborts them. A ConfigError on every process names the settings that differ
  from process 0's."""
  _check_same(lambda: _settings(config, extra or {}), "config",
              "every process of a run needs the same settings (but its own paths, only "
              "given or not alike, and progress)")


def check_same_data(dataset) -> None:
  """Every process read the same classes, input shape and vocabulary (each reads its
  own files: a vocabulary file or a dataset folder that differs between hosts had made
  models of other shapes, or other token ids)."""
  import hashlib
  import json

  def facts():
    vocab = None if dataset.vocab is None else dataset.vocab.to_dict()
    return {"num_classes": float(dataset.num_classes),
            "input_shape": [float(d) for d in dataset.input_shape],
            "label_names": [str(n) for n in dataset.label_names],
            "vocabulary": None if vocab is None else (
                f"{len(vocab['tokens'])} tokens, digest " + hashlib.sha256(json.dumps(
                    vocab, sort_keys=True).encode()).hexdigest()[:12])}
  _check_same(facts, "data", "every process of a run needs the same data: the same "
              "files at its config.dataset.path and dataset.vocabulary")


def _check_same(values, what: str, needs: str) -> None:
  import hashlib
  import json

  import jax
  import numpy as np
  if not jax.distributed.is_initialized() or jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils

  from flaxnets.config import ConfigError
  mine = json.loads(json.dumps(values(), sort_keys=True))
  text = json.dumps(mine, sort_keys=True).encode()
  digest = np.frombuffer(hashlib.sha256(text).digest()[:4], np.int32)[0]
  digests = np.asarray(multihost_utils.process_allgather(digest))
  if (digests == digests[0]).all():
    return
  size = int(np.asarray(multihost_utils.process_allgather(np.int32(len(text)))).max())
  padded = np.full(size, ord(" "), np.uint8)  # JSON allows trailing spaces
  padded[:len(text)] = np.frombuffer(text, np.uint8)
  zero = json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(padded))))
  others = [int(i) for i in np.flatnonzero(digests != digests[0])]
  me = jax.process_index()
  if me in others:
    missing = "(unset)"

    def shown(v):  # the numbers compared as floats, a whole one shown as such
      shown_v = int(v) if isinstance(v, float) and v.is_integer() and abs(v) < 2**53 else v
      text = repr(shown_v)
      return text if len(text) <= 120 else text[:117] + "..."
    diffs = [f"{k}={shown(mine.get(k, missing))} here, {shown(zero.get(k, missing))} on "
             "process 0" for k in sorted(set(mine) | set(zero))
             if mine.get(k, missing) != zero.get(k, missing)]
    raise ConfigError(f"this process ({me}) was given another {what} than process 0: "
                      f"{'; '.join(diffs[:6]) or 'the same values, written differently'}"
                      f"{' ...' if len(diffs) > 6 else ''}; {needs}")
  raise ConfigError(f"process(es) {others} of this run were given another {what} than "
                    f"process {me} (their output names the differences); {needs}")
