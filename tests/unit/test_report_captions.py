"""Every report caption renders cleanly: Jinja as Snakemake fills it, then docutils with no error
or warning (a stray `|name|` is a substitution reference and renders as an error block, #27)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CAPTIONS = sorted((ROOT / "workflow" / "report").glob("*.rst"))


def _configs():
    default = yaml.safe_load((ROOT / "config.yaml").read_text())
    paper = yaml.safe_load((ROOT / "configs" / "llava-1.5-7b.yaml").read_text())
    return {"organism": default, "paper": paper}


@pytest.mark.parametrize("config_name", ["organism", "paper"])
@pytest.mark.parametrize("caption", CAPTIONS, ids=[c.name for c in CAPTIONS])
def test_caption_renders_without_docutils_messages(caption, config_name):
    import docutils.core
    import docutils.utils
    import jinja2

    from vlminterp.workflow.config_checks import check_config

    config = _configs()[config_name]
    check_config(config, ROOT / "workflow/schemas/config.schema.yaml", ["test"])   # fills defaults
    text = jinja2.Template(caption.read_text()).render(snakemake=SimpleNamespace(config=config))
    messages = []

    class Collect:
        def write(self, message):
            messages.append(message)

    docutils.core.publish_parts(text, writer_name="html", settings_overrides={
        "report_level": docutils.utils.Reporter.INFO_LEVEL + 1, "halt_level": 5,
        "warning_stream": Collect(), "input_encoding": "unicode"})
    assert not [m for m in messages if m.strip()], f"{caption.name}: {''.join(messages)}"
