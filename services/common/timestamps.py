"""datetime <-> google.protobuf.Timestamp, the same way in every service."""

from __future__ import annotations

import datetime as dt

from google.protobuf.timestamp_pb2 import Timestamp


def to_timestamp(value: dt.datetime | None) -> Timestamp | None:
    """None stays None (the field is left unset); naive datetimes are taken as UTC."""
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC))
    return stamp
