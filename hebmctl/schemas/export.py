"""Write the JSON Schema of every manifest and config to a folder (the repo's top-level `schemas/`).

    python -m hebmctl.schemas.export schemas/
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hebmctl.schemas import json_schemas


def render(schema: dict) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def export(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in json_schemas().items():
        path = folder / name
        path.write_text(render(schema))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in export(Path(sys.argv[1] if len(sys.argv) > 1 else "schemas")):
        print(path)
