"""The ObserveRTC schemas this collector speaks (Apache-2.0, see LICENSE beside this file).

``v2_2_11``: the 2.x samples and the 18 report types (Avro, protobuf); ``v3_5_0``: the 3.x ClientSample.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

REPORTS_VERSION = "2.2.11"


def schema_text(version_dir: str, filename: str) -> str:
    return resources.files(__package__).joinpath(version_dir, filename).read_text(encoding="utf-8")


@cache
def avro_schema(version_dir: str, filename: str) -> dict[str, Any]:
    return json.loads(schema_text(version_dir, filename))
