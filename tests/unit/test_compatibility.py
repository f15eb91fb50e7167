"""docs/COMPATIBILITY.md is what `python -m vlminterp.testing.compatibility` measures: every family x
operation cell present, refusals equal to the adapters' own, every supported cell within tolerance,
and the synthetic families re-measured now give the committed verdicts."""
from __future__ import annotations

import re

import pytest
import torch
from shared_fixtures import FIXTURES, ROOT, require

from vlminterp.testing import compatibility
from vlminterp.models.adapters import ADAPTERS, OPERATIONS

TABLE = ROOT / "docs" / "COMPATIBILITY.md"


def _committed() -> dict[str, dict[str, str]]:
    """{family label: {operation: cell text}} from the committed table."""
    lines = [l for l in TABLE.read_text().splitlines() if l.startswith("| ") and not l.startswith("| ---")]
    header = [c.strip() for c in lines[0].strip("|").split(" | ")]
    assert header == ["family", *OPERATIONS]
    rows = {}
    for line in lines[1:]:
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        rows[cells[0]] = dict(zip(OPERATIONS, cells[1:], strict=True))
    return rows


def _value(cell: str) -> float | None:
    match = re.fullmatch(r"supported, max \|diff\| = (\S+)", cell)
    return float(match.group(1)) if match else None


def test_every_cell_is_present_and_refusals_are_the_adapters_own():
    rows = _committed()
    assert list(rows) == [label for label, _ in compatibility.FAMILIES.values()]
    adapters = {a.family: a for a in ADAPTERS}
    for family, (label, _) in compatibility.FAMILIES.items():
        for operation, cell in rows[label].items():
            refused = adapters[family].refused_operations.get(operation)
            if refused is not None:
                assert cell == f"refused: {refused}"
            elif (value := _value(cell)) is not None:
                assert value <= compatibility.TOLERANCE
            else:
                assert re.fullmatch(r"supported, 0 of \d+ greedy tokens differ", cell), cell


def _check_measured(family: str) -> None:
    label = compatibility.FAMILIES[family][0]
    committed = _committed()[label]
    torch.set_num_threads(1)
    for operation, cell in compatibility.measure_family(family, FIXTURES).items():
        text = cell.markdown().replace("\\|", "|")
        if _value(text) is not None:  # float rounding may differ by CPU: both within tolerance
            assert _value(committed[operation]) is not None and _value(text) <= compatibility.TOLERANCE
        else:
            assert text == committed[operation], (family, operation)


@pytest.mark.parametrize("family", ["llava", "internvl", "qwen2_vl"])
def test_the_script_reproduces_the_committed_row(family):
    _check_measured(family)


REAL_CONFIG_FAMILIES = [family for family, (_, source) in compatibility.FAMILIES.items() if not isinstance(source, str)]


@pytest.mark.slow
@pytest.mark.parametrize("family", REAL_CONFIG_FAMILIES)
def test_the_script_reproduces_the_committed_real_config_row(family):
    require(FIXTURES / compatibility.FAMILIES[family][1])
    _check_measured(family)


@pytest.mark.parametrize("operation", ["ablation", "knockout", "generation", "kept_caches", "prefix_sharing"])
def test_a_refused_operation_is_raised_by_name_before_any_work(operation):
    """A family's `refused_operations` entry stops the engine before it touches the input (its
    embeddings are None here: any work would fail otherwise)."""
    from vlminterp.interventions import Ablation, InterventionEngine, Knockout
    from vlminterp.interventions.engine import PreparedInput
    from vlminterp.models.adapters import LlavaAdapter, UnsupportedOperationError
    from vlminterp.testing.synthetic import build_synthetic

    class Refusing(LlavaAdapter):
        refused_operations = {operation: "not exact in this family"}

    model, processor = build_synthetic("tiny-llama")
    engine = InterventionEngine(model, Refusing(model, processor))
    unembedded = PreparedInput(torch.zeros(1, 5, dtype=torch.long), None)
    calls = {
        "ablation": lambda: engine.logits(unembedded, [Ablation([1])]),
        "knockout": lambda: engine.logits(unembedded, [Knockout([2], [1])]),
        "generation": lambda: engine.generate(unembedded, [None], max_new_tokens=1),
        "kept_caches": lambda: engine.kept_caches(unembedded, {}),
        "prefix_sharing": lambda: engine.logits(unembedded, [None]),
    }
    with pytest.raises(UnsupportedOperationError, match=f"llava: {operation} is refused: not exact in this family"):
        calls[operation]()
