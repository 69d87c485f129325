"""Read an offline W&B run back from its files: the history rows of the ``run-*.wandb`` log, config, tables.

The ``.wandb`` file is a LevelDB-style log (32 KiB blocks, 7-byte chunk headers: crc32, length, type) of
protobuf ``Record`` messages after a 7-byte file header; W&B no longer ships a Python reader, so the tests carry
this small one.
"""

import glob
import json
import struct

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _records(path):
    data = open(path, "rb").read()
    assert data[:4] == b":W&B", f"{path} is not a W&B run log"
    position, pieces = HEADER, []
    while position + HEADER <= len(data):
        room = BLOCK - position % BLOCK
        if room < HEADER:  # the rest of a block too small for a chunk header is padding
            position += room
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + HEADER])
        chunk = data[position + HEADER : position + HEADER + length]
        position += HEADER + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pieces = [chunk]
        elif kind == MIDDLE:
            pieces.append(chunk)
        elif kind == LAST:
            pieces.append(chunk)
            yield b"".join(pieces)
        elif kind == 0 and length == 0:
            break


def history(run_dir):
    """Every logged row of an offline run, in order: ``[{key: value}]`` (values decoded from JSON)."""
    from wandb.proto import wandb_internal_pb2 as pb

    rows: dict[int, dict] = {}  # by _step: records of one row that W&B wrote in parts are merged
    for raw in _records(glob.glob(f"{run_dir}/run-*.wandb")[0]):
        record = pb.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            items = record.history.item
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}
            rows.setdefault(int(row.get("_step", len(rows))), {}).update(row)
    return [rows[step] for step in sorted(rows)]


def config(run_dir):
    """The run's config as W&B recorded it in the log (``{key: value}``, the last update of each key)."""
    from wandb.proto import wandb_internal_pb2 as pb

    values = {}
    for raw in _records(glob.glob(f"{run_dir}/run-*.wandb")[0]):
        record = pb.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "config":
            values.update({item.key: json.loads(item.value_json) for item in record.config.update})
    return values


def table_chain(run_dir, key):
    """Per logged increment of the incremental table ``key``, in order: ``(increment_num, previous increments)``.

    One chain of three increments is ``[(0, 0), (1, 1), (2, 2)]``: W&B's merged table holds every row; a chain that
    restarted (a new incremental table) reads ``[(0, 0), (0, 0), (1, 1)]`` and the merged table loses the first.
    """
    found = []
    for row in history(run_dir):
        if f"{key}/increment_num" in row:
            found.append((row[f"{key}/increment_num"], len(row[f"{key}/previous_increments_paths"])))
    return found


def table_rows(run_dir, key):
    """All rows of the table logged under ``key`` (every increment of an incremental table), with its columns."""

    def increment(path):  # <key>_<increment>_<hash>.table.json
        return int(path.rsplit("/", 1)[1].split("_")[-2])

    files = sorted(glob.glob(f"{run_dir}/files/media/table/{key}_*.table.json"), key=increment)
    tables = [json.load(open(path)) for path in files]
    return (tables[0]["columns"] if tables else []), [row for table in tables for row in table["data"]]


def defined_metrics(run_dir):
    """``{name or glob: (step_metric, summaries)}`` of the run's ``define_metric`` calls."""
    from wandb.proto import wandb_internal_pb2 as pb

    defined = {}
    for raw in _records(glob.glob(f"{run_dir}/run-*.wandb")[0]):
        record = pb.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "metric":
            metric = record.metric
            summaries = {field.name for field, value in metric.summary.ListFields() if value}
            defined[metric.name or metric.glob_name] = (metric.step_metric, summaries)
    return defined
