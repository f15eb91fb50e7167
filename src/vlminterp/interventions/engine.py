"""The fast engine: C conditions of one input as one batch, with the untouched prefix computed once.

    engine = InterventionEngine(model, adapter)
    prepared = engine.prepare(input_ids, pixel_values)       # vision tower + projector run once
    prepared = engine.prepare(input_ids, **adapter.image_inputs(encoding))   # any family (Qwen2-VL: + grid_thw)
    conditions = [Knockout([T - 1], cells, layers=w) for w in windows]   # or Ablation(...), Condition(...)
    logits = engine.logits(prepared, conditions)             # (C, 1, V): last position by default
    out = engine.generate(prepared, [None, Knockout(From(T), image_positions)], max_new_tokens=64)
    out.tokens[c]                                            # generated ids of condition c (up to EOS)
    longer = engine.extend(prepared, question_ids)           # the same input with text appended
    engine.observe_generation(prepared, out.tokens[0], Capture(["attn.3"], From(T - 1)))   # rows that produced it
    kept = engine.kept_caches(prepared, {"prompt": text_positions})   # subsets of the prompt's KV cache
    answers = engine.continue_cache(kept["prompt"], [q1_ids, q2_ids], max_new_tokens=4)   # batched

Generation stops at ANY of the model's EOS ids (`adapter.eos_token_ids`: the text config's and
the generation config's), unless `eos_token_id` (an int or a list, as in `model.generate`) says otherwise.

Why it is fast: an intervention whose earliest touched position is p leaves every
position before p unchanged, so positions < p run once (KV cache, batch 1) and each condition runs
only positions >= p, reading the one batch-1 prefix cache in place (shared_prefix.py: the
extra memory of a condition is its own positions' keys/values, never a copy of the prefix);
conditions are batched (each row its own ablation or knockout mask, see knockout.py); greedy
decoding of C rows costs about one row's memory traffic. Blocking the last prompt token is one
token of work per condition.

Positions: every forward gets explicit RoPE position ids from `adapter.rope_positions` (1-D, or
Qwen2-VL's 3-D M-RoPE), sliced for the suffix and continued (index + delta) for decode steps, so
a shared prefix and cached decoding use exactly the positions of one full forward.

Sliding-window attention (Mistral, Phi-3): every cache here keeps ALL positions (the prefix is
built in a plain `DynamicCache()`, never the model's window-trimmed one), so cache slot = position
holds, and the model's own mask, which the knockout mask is combined with, applies the window.

Layout (`Batching`): by default (`FAST`) conditions that start at different positions are split into
groups that each share their own prefix (`prefix_groups`), and a call of rows holds at most
`row_positions` own positions (rows x positions after the prefix), so edits inside the image run
as cache-sized calls instead of one batch of tens of thousands of positions (benchmarks/README.md).
`ONE_PREFIX` is one prefix shared by all and `max_batch_size` rows per call: the layout every
experiment's tables were recorded with, pinned by `experiments/shared/session.py` (another layout gives
equal results up to float rounding, not the same bits).
`share_prefix=False, max_batch_size=1` turns both tricks off (a sequential baseline for benchmarks);
`reference.py` is the naive oracle the tests compare against.

CUDA out-of-memory: a chunk of conditions that runs out of memory runs again at half the size, and
the smaller size stays (`engine.batches`, see batching.py); the results are the same whatever size
ends up used, and `engine.batches.columns(since)` gives the batch_size / oom_retries columns.
"""
from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from transformers import DynamicCache

from ..batching import AdaptiveBatch
from ..models.adapters import VLMAdapter, adapter_for
from ..models.adapters.positions import RopePositions
from ..models.routing import kept_layout, observe_ids
from .conditions import Condition, ConditionLike, as_condition
from .cache import PromptCache, continue_batch, select_cache
from .decoding import EosIds, greedy_continue, until_eos
from .edit import by_kind
from .attention import attend_shared_prefix
from .shared_prefix import SharedPrefixCache


@dataclass
class PreparedInput:
    """One tokenized input with its language-model input embeddings (image features included)."""

    input_ids: torch.Tensor  # (1, T)
    inputs_embeds: torch.Tensor  # (1, T, d)
    positions: RopePositions | None = None  # None: 1-D positions 0..T-1

    @property
    def length(self) -> int:
        return self.input_ids.shape[1]

    @property
    def rope(self) -> RopePositions:
        if self.positions is None:
            return RopePositions.arange(self.length, device=self.input_ids.device)
        return self.positions


@dataclass
class GenerationOutput:
    tokens: list[list[int]]  # per condition: generated ids, up to and including the first EOS
    prefix_length: int  # positions computed once and shared by every condition

    def as_tensor(self, pad_id: int) -> torch.Tensor:
        width = max([len(t) for t in self.tokens] + [0])
        return torch.tensor([t + [pad_id] * (width - len(t)) for t in self.tokens], dtype=torch.long)


def shared_prefix_length(conditions: Sequence[Condition], length: int) -> int:
    """Number of leading positions no condition touches, capped so each condition runs >= 1 token."""
    touched = [c.earliest_touched() for c in conditions]
    touched = [t for t in touched if t is not None]
    return max(0, min(touched + [length - 1]))


# A group's fixed cost in prefix_groups, in positions: a call, a prefix forward, a cache.
GROUP_OVERHEAD_POSITIONS = 32


@dataclass(frozen=True)
class Batching:
    """How the engine lays the conditions of one input out in forward calls. Results are equal up to
    float rounding whatever the layout; their bits depend on it (batch shapes change the kernels' sums).

    group_prefixes: split the conditions by where they start (`prefix_groups`), each group sharing its
    own prefix; group_overhead: a group's fixed cost there, in positions; row_positions: at most this
    many own positions (rows x positions after the prefix) per call of rows (None: `max_batch_size` rows)."""

    group_prefixes: bool
    row_positions: int | None
    group_overhead: int = GROUP_OVERHEAD_POSITIONS

    def rows_per_call(self, own_positions: int) -> int | None:
        """The most rows of `own_positions` each in one call (None: no limit besides the batch size)."""
        if self.row_positions is None:
            return None
        return max(1, self.row_positions // max(1, own_positions))


# The default, for API and benchmark users: groups, and calls of rows small enough to stay in the
# CPU's caches (36 conditions of 585 own positions: 0.66x as fast in one call as in calls of 4 rows).
FAST = Batching(group_prefixes=True, row_positions=2048)
# One prefix shared by every condition, `max_batch_size` rows per call: the layout every experiment
# table was recorded with (experiments/shared/session.py pins it).
ONE_PREFIX = Batching(group_prefixes=False, row_positions=None)


def prefix_groups(conditions: Sequence[Condition], length: int,
                  overhead: int = GROUP_OVERHEAD_POSITIONS) -> list[list[int]]:
    """Indices of `conditions` split into groups that each share their own prefix, chosen to minimise
    the positions computed: a group of n conditions starting at p costs p (its prefix, once) +
    n * (length - p) (each row's own positions) + `overhead`. Edits spread over the
    image (little shared by all) split into groups; edits of the last positions stay one group.
    Exact dynamic programming over the conditions sorted by where they start."""
    start = [c.earliest_touched() for c in conditions]
    start = [length - 1 if s is None else min(s, length - 1) for s in start]
    order = sorted(range(len(conditions)), key=lambda i: start[i])
    best = [0.0] + [float("inf")] * len(order)  # best[j]: cost of the first j conditions (sorted)
    cut = [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        for i in range(j):  # conditions i .. j-1 as one group, sharing start[order[i]]
            p = start[order[i]]
            cost = best[i] + p + (j - i) * (length - p) + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], len(order)
    while j > 0:
        groups.append(sorted(order[cut[j]:j]))
        j = cut[j]
    return groups[::-1]


class InterventionEngine:
    """Batched, prefix-shared forward passes and greedy generation under per-row interventions."""

    def __init__(
        self,
        model,
        adapter: VLMAdapter | None = None,
        *,
        max_batch_size: int = 64,
        share_prefix: bool = True,
        batching: Batching = FAST,
        stage: str = "intervention engine",
    ):
        self.model = model
        self.adapter = adapter if adapter is not None else adapter_for(model)
        self.batches = AdaptiveBatch(max_batch_size, stage)  # halves on CUDA out-of-memory
        self.share_prefix = share_prefix
        self.batching = batching  # groups by where conditions start, rows per call (`Batching`)

    @property
    def max_batch_size(self) -> int:
        """Most conditions per batch now (the configured size unless an OOM halved it)."""
        return self.batches.size

    @property
    def device(self) -> torch.device:
        return self.adapter.embed_tokens.weight.device

    @torch.no_grad()
    def prepare(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None, **image_inputs
    ) -> PreparedInput:
        """Embed one input (batch of 1); the vision tower runs here, once for all conditions.

        `image_inputs`: other processor outputs the family needs (Qwen2-VL: image_grid_thw)."""
        if input_ids.ndim == 1:
            input_ids = input_ids[None]
        if input_ids.shape[0] != 1:
            raise ValueError("the engine runs the conditions of ONE input; got a batch of inputs")
        input_ids = input_ids.to(self.device)
        if pixel_values is not None:
            pixel_values = pixel_values.to(self.device)
        image_inputs = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in image_inputs.items()}
        embeds = self.adapter.embed(input_ids, pixel_values, **image_inputs)
        positions = self.adapter.rope_positions(input_ids, **image_inputs).to(self.device)
        return PreparedInput(input_ids, embeds, positions)

    # ---- internals ------------------------------------------------------------------------------
    def _prefix(self, prepared: PreparedInput, conditions: list[Condition]):
        observe_ids(self.adapter.model, prepared.input_ids)  # a planted routing's layout (models/routing.py)
        self.adapter.observe(prepared.input_ids, prepared.inputs_embeds)
        prefix = shared_prefix_length(conditions, prepared.length) if self.share_prefix else 0
        prefix = self.adapter.shared_prefix_limit(prepared.input_ids, prefix)
        if prefix == 0:
            return 0, None, None
        # Reading edits (Capture) change nothing, so they never shorten the prefix; the prefix's
        # positions they ask for are read here, once, from the forward every row shares.
        readers = [e for c in conditions for e in c.edits if not getattr(e, "writes", True)]

        def forward():
            with contextlib.ExitStack() as context:
                for kind, rows in by_kind([readers]):
                    context.enter_context(kind.reference(self.adapter, rows[0]))
                return self.adapter.language_model_forward(
                    prepared.inputs_embeds[:, :prefix],
                    past_key_values=DynamicCache(),  # keeps every position, also under a sliding window
                    position_ids=prepared.rope.span(0, prefix),
                    use_cache=True,
                )

        hidden, cache = self.batches.single(forward, f"the {prefix}-position prefix shared by every condition")
        return prefix, hidden, cache

    def _row_context(self, chunk: list[Condition], cache: SharedPrefixCache) -> contextlib.ExitStack:
        """One chunk's edits: the shared prefix read in place (never copied per row), then each kind
        of edit applied to its rows (`edit.Edit.batched`; the engine knows no kind)."""
        context = contextlib.ExitStack()
        if cache.prefix_length:
            context.enter_context(attend_shared_prefix(self.adapter, cache))
        for kind, rows in by_kind([c.edits for c in chunk]):
            context.enter_context(kind.batched(self.adapter, rows))
        return context

    def _groups(self, conds: list[Condition], length: int) -> list[list[int]]:
        """The conditions' groups (indices), one group unless `batching` splits them (`prefix_groups`)."""
        if self.batching.group_prefixes and self.share_prefix:
            return prefix_groups(conds, length, self.batching.group_overhead)
        return [list(range(len(conds)))]

    def _ungrouped(self) -> "InterventionEngine":
        """This engine (same model, batches, sharing, rows per call) with grouping off: runs one group."""
        engine = object.__new__(InterventionEngine)
        engine.__dict__.update(self.__dict__, batching=replace(self.batching, group_prefixes=False))
        return engine

    def _conditions(self, conditions: Sequence[ConditionLike], length: int,
                    operation: str = "forward") -> list[Condition]:
        """The conditions, every edit checked against a `length`-token input, and the family asked
        whether it supports `operation` and each edit's operation (`VLMAdapter.check_operation`), before any work."""
        from .ablation import Ablation
        from .knockout import Knockout
        from .reading import Capture

        conds = [as_condition(c) for c in conditions]
        self.adapter.check_operation(operation)
        if self.share_prefix and operation in ("forward", "generation"):
            self.adapter.check_operation("prefix_sharing")
        edit_operations = {Ablation: "ablation", Knockout: "knockout", Capture: "capture"}
        for condition in conds:
            for edit in condition.edits:
                if type(edit) in edit_operations:
                    self.adapter.check_operation(edit_operations[type(edit)])
                edit.validate(self.adapter, length)
        return conds

    @staticmethod
    def _suffix_embeds(prepared: PreparedInput, batch: int, prefix: int) -> torch.Tensor:
        return prepared.inputs_embeds.expand(batch, -1, -1)[:, prefix:]

    # ---- public API -----------------------------------------------------------------------------
    @torch.no_grad()
    def logits(
        self,
        prepared: PreparedInput,
        conditions: Sequence[ConditionLike],
        positions: Sequence[int] | None = (-1,),
    ) -> torch.Tensor:
        """(C, P, V) logits at `positions` (default: the last; None = all) for each condition."""
        length = prepared.length
        conds = self._conditions(conditions, length)
        if len(groups := self._groups(conds, length)) > 1:
            parts = [self._ungrouped().logits(prepared, [conds[i] for i in g], positions) for g in groups]
            out = parts[0].new_empty(len(conds), *parts[0].shape[1:])
            for members, part in zip(groups, parts):
                out[members] = part
            return out
        wanted = list(range(length)) if positions is None else [p % length for p in positions]
        prefix, prefix_hidden, prefix_cache = self._prefix(prepared, conds)
        from_prefix = sorted({p for p in wanted if p < prefix})
        column_of = {p: i for i, p in enumerate(from_prefix)}
        prefix_logits = self.adapter.unembed(prefix_hidden[:, from_prefix]) if from_prefix else None

        def run(chunk: list[Condition]) -> torch.Tensor:
            batch = len(chunk)
            cache = SharedPrefixCache(prefix_cache, batch, length, self.adapter)
            with self._row_context(chunk, cache):
                hidden, _ = self.adapter.language_model_forward(
                    self._suffix_embeds(prepared, batch, prefix),
                    past_key_values=cache,
                    position_ids=prepared.rope.span(prefix, length, batch),
                    use_cache=True,
                )
            if all(p >= prefix for p in wanted):  # one unembedding, no per-position copies
                return self.adapter.unembed(hidden[:, [p - prefix for p in wanted]])
            columns = []
            for p in wanted:
                if p < prefix:
                    columns.append(prefix_logits[:, column_of[p]].expand(batch, -1))
                else:
                    columns.append(self.adapter.unembed(hidden[:, p - prefix]))
            return torch.stack(columns, dim=1)

        chunks = self.batches.map(conds, run, limit=self.batching.rows_per_call(length - prefix))
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)

    @torch.no_grad()
    def generate(
        self,
        prepared: PreparedInput,
        conditions: Sequence[ConditionLike],
        max_new_tokens: int,
        eos_token_id: EosIds = None,
    ) -> GenerationOutput:
        """Greedy generation, one row per condition; knockouts also act on the decode steps. Each row
        stops at any of `eos_token_id` (int or list; default: every EOS id of the model)."""
        eos = self.adapter.eos_token_ids if eos_token_id is None else eos_token_id
        length = prepared.length
        conds = self._conditions(conditions, length, "generation")
        if len(groups := self._groups(conds, length)) > 1:
            tokens: list[list[int] | None] = [None] * len(conds)
            shortest = length
            for members in groups:
                part = self._ungrouped().generate(prepared, [conds[i] for i in members], max_new_tokens, eos_token_id)
                shortest = min(shortest, part.prefix_length)
                for index, row in zip(members, part.tokens):
                    tokens[index] = row
            return GenerationOutput(tokens=tokens, prefix_length=shortest)
        prefix, _, prefix_cache = self._prefix(prepared, conds)

        def run(chunk: list[Condition]) -> list[list[int]]:
            batch = len(chunk)
            cache = SharedPrefixCache(prefix_cache, batch, length + max_new_tokens, self.adapter)
            with self._row_context(chunk, cache):
                hidden, cache = self.adapter.language_model_forward(
                    self._suffix_embeds(prepared, batch, prefix),
                    past_key_values=cache,
                    position_ids=prepared.rope.span(prefix, length, batch),
                    use_cache=True,
                )
                generated = greedy_continue(
                    self.adapter, hidden, cache, length, max_new_tokens, eos, positions=prepared.rope
                )
            return [until_eos(row, eos) for row in generated.tolist()]

        limit = self.batching.rows_per_call(length - prefix)
        tokens = [row for rows in self.batches.map(conds, run, limit=limit) for row in rows]
        return GenerationOutput(tokens=tokens, prefix_length=prefix)

    # ---- operations on one prepared input (no conditions) ----------------------------------------
    def gradients(self, inputs_embeds: torch.Tensor, target_token: int, *, objective: str = "probability",
                  rope: RopePositions | None = None) -> torch.Tensor:
        """(B, T, d) gradient of the target token's probability (or logit) at the last position with
        respect to each row of `inputs_embeds` (B, T, d), e.g. the points of an integrated-gradient
        path (`input_gradients`)."""
        return input_gradients(self.adapter, inputs_embeds, target_token, objective=objective, rope=rope)

    @torch.no_grad()
    def extend(self, prepared: PreparedInput, new_input_ids: torch.Tensor) -> PreparedInput:
        """`prepared` followed by the text tokens `new_input_ids` ((1, n) or (n,)): their embeddings
        appended, their RoPE positions continuing after the prompt (index + delta, M-RoPE aware),
        exactly the input a processor would give for the longer text."""
        if new_input_ids.ndim == 1:
            new_input_ids = new_input_ids[None]
        if new_input_ids.shape[1] == 0:
            return prepared
        new_input_ids = new_input_ids.to(self.device)
        input_ids = torch.cat([prepared.input_ids, new_input_ids], dim=1)
        embeds = self.adapter.embed_tokens(new_input_ids).to(prepared.inputs_embeds.dtype)
        rope = prepared.rope
        positions = RopePositions(rope.span(0, input_ids.shape[1]), rope.delta)
        return PreparedInput(input_ids, torch.cat([prepared.inputs_embeds, embeds], dim=1), positions)

    @torch.no_grad()
    def observe_generation(self, prepared: PreparedInput, generated: Sequence[int], capture) -> None:
        """One forward pass over `prepared` + `generated` (the last generated token excluded: it is
        never fed back) read by `capture` (a `reading.Capture`, e.g. of `attn.{l}` at From(P - 1)):
        how an experiment reads the attention that produced a generation (row P-1+t produced token t)."""
        self.adapter.check_operation("capture")
        fed = torch.as_tensor(list(generated[:-1]), dtype=torch.long)
        full = self.extend(prepared, fed)
        observe_ids(self.adapter.model, full.input_ids)
        self.adapter.observe(full.input_ids, full.inputs_embeds)
        with capture.reading(self.adapter):
            self.adapter.language_model_forward(full.inputs_embeds, position_ids=full.rope.span(0, full.length),
                                                use_cache=False)

    @torch.no_grad()
    def prompt_cache(self, prepared: PreparedInput, condition: ConditionLike = None):
        """The KV cache of the whole prepared input (`cache.PromptCache`: every position kept, with
        the prompt's RoPE positions), computed under `condition`'s edits (None: unedited)."""
        (condition,) = self._conditions([condition], prepared.length, "kept_caches")
        observe_ids(self.adapter.model, prepared.input_ids)
        self.adapter.observe(prepared.input_ids, prepared.inputs_embeds)
        rope = prepared.rope
        with contextlib.ExitStack() as context:
            for kind, rows in by_kind([condition.edits]):
                context.enter_context(kind.batched(self.adapter, rows))
            _, cache = self.adapter.language_model_forward(
                prepared.inputs_embeds, past_key_values=PromptCache(rope),
                position_ids=rope.span(0, prepared.length), use_cache=True)
        return cache

    def kept_caches(self, prepared: PreparedInput, selections: Mapping, continue_after_kept=(),
                    condition: ConditionLike = None) -> dict:
        """{key: `cache.KeptCache`} of the prompt's KV cache (one prefill, under `condition`'s edits)
        keeping, per key, the positions `selections[key]` (one list for every layer, or one list per
        layer: `cache.select_cache`); each answers any number of `continue_cache` calls (the
        continuation itself runs unedited). Text continues after the prompt, or, for the keys in
        `continue_after_kept`, one position after the highest kept one (`KeptCache.continuing_after_kept`)."""
        self.adapter.check_operation("kept_caches")
        cache = self.prompt_cache(prepared, condition)
        kept = {key: select_cache(cache, keep) for key, keep in selections.items()}
        kept = {key: replace(c, routing_layout=kept_layout(self.adapter.model, c.kept_positions, c.width))
                for key, c in kept.items()}  # a planted routing's layout, as of this prompt
        return {key: c.continuing_after_kept() if key in continue_after_kept else c for key, c in kept.items()}

    @torch.no_grad()
    def continue_cache(self, kept, continuations: Sequence[torch.Tensor], max_new_tokens: int,
                       eos_token_id: EosIds = None) -> list[list[int]]:
        """Greedy answers to each continuation ((1, n) token ids, any lengths) appended after the
        kept cache (`cache.select_cache`): continuations of one length run as one batch (chunked at
        this engine's batch size, halved on CUDA out-of-memory); answers in the given order."""
        self.adapter.check_operation("kept_caches")
        by_length: dict[int, list[int]] = {}
        for index, ids in enumerate(continuations):
            by_length.setdefault(ids.shape[-1], []).append(index)
        answers: list[list[int] | None] = [None] * len(continuations)
        for members in by_length.values():
            def run(chunk: list[int]) -> list[list[int]]:
                batch = torch.cat([continuations[i].reshape(1, -1) for i in chunk]).to(self.device)
                return continue_batch(self.adapter, kept, batch, max_new_tokens, eos_token_id)

            answered = [tokens for part in self.batches.iterate(members, run) for tokens in part]
            for index, tokens in zip(members, answered):
                answers[index] = tokens
        return answers


def input_gradients(adapter: VLMAdapter, inputs_embeds: torch.Tensor, target_token: int, *,
                    objective: str = "probability", rope: RopePositions | None = None) -> torch.Tensor:
    """`InterventionEngine.gradients`: one full forward of the batch (no cache), the target's
    softmax probability ("probability") or logit ("logit") at the last position, summed over rows,
    differentiated with respect to the input embeddings. `rope`: the input's positions (None: 0..T-1)."""
    if objective not in ("probability", "logit"):
        raise ValueError(f"objective must be 'probability' or 'logit', got {objective!r}")
    with torch.enable_grad():
        path = inputs_embeds.detach().requires_grad_(True)
        positions = None if rope is None else rope.span(0, path.shape[1], batch=path.shape[0])
        hidden, _ = adapter.language_model_forward(path, position_ids=positions, use_cache=False)
        logits = adapter.unembed(hidden[:, -1]).float()
        value = (logits if objective == "logit" else logits.softmax(dim=-1))[:, target_token]
        (grad,) = torch.autograd.grad(value.sum(), path)
    return grad
