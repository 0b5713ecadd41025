"""Validates an OpenVEX document against the published JSON schema (draft 2020-12) with
PyPI's jsonschema, formats checked. Prints "valid", or every error and exits 1."""
import json
import sys

import jsonschema

schema_path, doc_path = sys.argv[1], sys.argv[2]
with open(schema_path) as f:
    schema = json.load(f)
with open(doc_path) as f:
    doc = json.load(f)
validator = jsonschema.Draft202012Validator(
    schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
for e in errors:
    print(f"{list(e.path)}: {e.message}")
if errors:
    sys.exit(1)
print("valid")
