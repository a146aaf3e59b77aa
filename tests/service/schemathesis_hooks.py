"""Schemathesis hooks for tests/service/test_schemathesis.py (loaded by `st` through SCHEMATHESIS_HOOKS).

`method: import` needs a real LoRA file in `options.lora_b64`: the spec can say "a base64 string", not "a
safetensors LoRA whose modules exist in the served model", so generated ones are refused (422 `invalid_lora`) as
they should be. Schema-valid ones are left out here; tests/service/test_lora_import.py covers imports with real files.
Uploads (`reference_images`, `positive_images` and their masks) are the same: the spec can say "base64 strings", not
"PNG or JPEG images of this size for a method that takes them", so generated ones are refused (422 `invalid_base64`,
`invalid_image`, `empty_upload`, `upload_not_supported`, also when sent inside `options`);
tests/service/test_uploads.py covers real and bad uploads.
Also left out: schema-valid erasures whose anchor is the concept, a cross-field rule JSON Schema cannot state; they
are refused with 422 (test_an_erasure_onto_itself_is_refused in tests/service/test_schemathesis.py).
"""

from __future__ import annotations

import schemathesis

UPLOAD_FIELDS = ("reference_images", "reference_masks", "positive_images", "positive_masks")


@schemathesis.hook
def filter_case(ctx: schemathesis.HookContext, case: schemathesis.Case) -> bool:
    """Leaves out schema-valid imports (schema-invalid ones are still sent and must be refused)."""
    body = case.body
    positive = case.meta is None or case.meta.generation.mode.is_positive
    if not (positive and isinstance(body, dict)):
        return True
    if body.get("method") == "import":
        return False
    options = body.get("options")
    in_options = isinstance(options, dict) and any(field in options for field in UPLOAD_FIELDS)
    if in_options or any(body.get(field) is not None for field in UPLOAD_FIELDS):
        return False
    # A cross-field rule the schema cannot express (anchor != concept): refused with 422, tested separately.
    return not (
        isinstance(body.get("anchor"), str)
        and " ".join(body["anchor"].split()) == " ".join(str(body.get("concept", "")).split())
    )
