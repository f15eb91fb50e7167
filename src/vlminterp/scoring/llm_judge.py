"""The optional LLM judge (K2, as in Kaduri et al.): an LLM lists the objects, sets are compared.

    from vlminterp.scoring.llm_judge import LLMJudge, LLMJudgeSpec
    spec = LLMJudgeSpec(base_url="https://api.openai.com/v1", model="gpt-4o-2024-08-06",
                        api_key_env="OPENAI_API_KEY", seed=0, cache_path="results/k2/llm_cache.jsonl")
    with LLMJudge(spec, vocabulary=load_vocabulary("coco")) as judge:
        judge.list_objects("A puppy on a sofa.")            # -> ['puppy', 'sofa'] (one request, then cached)
        judge.score("A dog.", "A puppy on a sofa.")         # -> Score(precision=1.0, recall=0.5, ...)
        table = judge.judge_table(df, "description", "reference")

One request per description (``POST {base_url}/chat/completions``) asks for its objects as a JSON
array of strings; the first such array in the answer is taken, and the two lists are matched here
(``judge.score_sets``). The protocol: docs/PROTOCOLS.md, "K2. Attention knockout between token
groups", the judge.

The API key. ``api_key_env`` is the NAME of an environment variable; the key is read from it at
each request, sent only in the Authorization header, and never kept on an object, logged,
cached or put in an error message (messages are scrubbed of it in any case). Leave
``api_key_env`` as None for local servers that need no key.

The cache. Every parsed answer is appended to ``cache_path`` (JSON lines, one complete line per
write, under an exclusive file lock), keyed by the SHA-256 of (base_url, model, seed,
temperature, max_tokens, messages). A rerun reads it back and sends no request for anything
already answered. Unparseable answers are never cached. A torn last line (a crash mid-write)
is skipped with a warning. Empty descriptions are answered with [] without a request.

Errors. Anything that prevents an answer raises ``LLMJudgeError`` naming the endpoint URL (without
credentials): unreachable after ``retries`` retries (connection errors, timeouts, HTTP 429 and
5xx are retried with exponential backoff), another HTTP status (not retried), a body that is
not a chat completion, or content with no JSON array of strings.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import pandas as pd
import requests

from vlminterp.scoring.judge import LIST_SEPARATOR, SCORE_COLUMNS, Score, check_judge_columns, score_sets
from vlminterp.scoring.mentions import plural_forms
from vlminterp.scoring.vocabulary import SynonymVocabulary, VocabularyLike, as_vocabulary

try:  # POSIX: serialise appends from several processes sharing one cache file
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

log = logging.getLogger(__name__)

#: Columns ``LLMJudge.judge_table`` adds: the offline judge's, then the LLM's raw object lists.
LLM_SCORE_COLUMNS: tuple[str, ...] = (*SCORE_COLUMNS, "candidate_objects", "reference_objects")

SYSTEM_PROMPT = "You read descriptions of images and list the physical objects they mention."
USER_PROMPT = (
    "List every physical object that the image description below says is in the image: things and "
    "living beings, not colours, materials, places, actions or the image itself. Give each kind of "
    "object once, as a short noun without colour, size or other attributes (\"red car\" -> \"car\"). "
    "Answer with a JSON array of strings and nothing else, for example [\"dog\", \"frisbee\"]; "
    "answer [] if there is none.\n\n<description>\n{description}\n</description>"
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ARTICLES = ("a ", "an ", "the ", "some ")


class LLMJudgeError(RuntimeError):
    """The LLM endpoint could not give a usable answer (the message names the URL, never the key)."""


@dataclass(frozen=True)
class LLMJudgeSpec:
    """Where and how to ask. Built from config; holds no secret.

    Attributes:
        base_url: the OpenAI-compatible API root, e.g. "https://api.openai.com/v1" or
            "http://127.0.0.1:8000/v1"; requests go to ``{base_url}/chat/completions``. Must not
            carry credentials or a query string.
        model: model name sent with each request.
        api_key_env: NAME of the environment variable holding the API key (never the key);
            None sends no Authorization header.
        seed: sent as ``seed`` (best-effort determinism on servers that honour it).
        temperature: sampling temperature; 0 for the protocol.
        timeout: seconds to wait for one response.
        retries: extra attempts after a connection error, timeout, HTTP 429 or 5xx.
        backoff: seconds before the first retry, doubled each time.
        max_tokens: cap on the answer's length.
        cache_path: JSON-lines answer cache; None keeps answers in memory only.
    """

    base_url: str
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"
    seed: int = 0
    temperature: float = 0.0
    timeout: float = 60.0
    retries: int = 3
    backoff: float = 1.0
    max_tokens: int = 512
    cache_path: str | None = None

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("base_url must be an http(s) URL such as https://api.openai.com/v1")
        if parts.username or parts.password:
            raise ValueError("base_url must not contain credentials; put the key in the environment "
                             "variable named by api_key_env")
        if parts.query or parts.fragment:
            raise ValueError(f"base_url must not have a query string or fragment: {_redact(self.base_url)}")
        if not self.model:
            raise ValueError("model must be a non-empty model name")
        if self.api_key_env is not None and not _ENV_NAME.fullmatch(self.api_key_env):
            # never echo the value: it may be a key pasted by mistake
            raise ValueError("api_key_env must be the NAME of an environment variable (letters, digits, "
                             "underscore), not the key itself")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not self.timeout > 0:
            raise ValueError(f"timeout must be > 0, got {self.timeout}")
        if self.retries < 0 or self.backoff < 0 or self.max_tokens < 1:
            raise ValueError("retries and backoff must be >= 0 and max_tokens >= 1")

    @property
    def endpoint(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"


def build_messages(description: str) -> list[dict[str, str]]:
    """The chat messages asking for the objects of one description."""
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": USER_PROMPT.format(description=description.strip())}]


def cache_key(spec: LLMJudgeSpec, messages: Sequence[dict[str, str]]) -> str:
    """SHA-256 of everything that determines an answer (never the key)."""
    payload = {"base_url": spec.base_url.rstrip("/"), "model": spec.model, "seed": spec.seed,
               "temperature": spec.temperature, "max_tokens": spec.max_tokens, "messages": list(messages)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def parse_object_list(content: str) -> list[str]:
    """The first JSON array of strings in ``content`` (stripped, empty entries dropped).

    Raises ValueError when there is none.
    """
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\[", content):
        try:
            value, _ = decoder.raw_decode(content, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return [v.strip() for v in value if v.strip()]
    raise ValueError("no JSON array of strings in the answer")


def normalise_object(name: str) -> str:
    """Lower case, single spaces (hyphens too), no surrounding punctuation, no leading article."""
    text = " ".join(re.split(r"[\s\-]+", name.lower())).strip(" .,;:!?\"'()[]{}")
    for article in _ARTICLES:
        if text.startswith(article):
            text = text[len(article):]
    return text


def match_object_lists(candidate: Iterable[str], reference: Iterable[str],
                       vocabulary: VocabularyLike | None = None) -> tuple[set[str], set[str]]:
    """Map two LLM object lists to comparable keys (see the module docstring); score with ``score_sets``."""
    vocab = None if vocabulary is None else as_vocabulary(vocabulary)

    def keys(names: Iterable[str]) -> list[set[str]]:
        out = []
        for name in names:
            text = normalise_object(name)
            if not text:
                continue
            cats = vocab.categories_in(text) if vocab is not None else set()
            out.append(cats if cats else {text})
        return out

    cand, ref = keys(candidate), keys(reference)
    free = {k for ks in cand + ref for k in ks if vocab is None or k not in vocab.categories}
    canonical = {}
    for name in free:  # "dogs" -> "dog" when "dog" is also listed
        singular = [m for m in free if m != name and name in plural_forms(m)]
        canonical[name] = min(singular, key=len) if singular else name
    flat = lambda groups: {canonical.get(k, k) for ks in groups for k in ks}  # noqa: E731
    return flat(cand), flat(ref)


class LLMJudge:
    """Asks an OpenAI-compatible endpoint for object lists, caches the answers, scores descriptions.

    ``requests_sent`` and ``cache_hits`` count this instance's traffic (tests and logs use them).
    """

    def __init__(self, spec: LLMJudgeSpec, vocabulary: VocabularyLike | None = None, *,
                 session: requests.Session | None = None) -> None:
        self.spec = spec
        self.vocabulary: SynonymVocabulary | None = None if vocabulary is None else as_vocabulary(vocabulary)
        self._session = session or requests.Session()
        self._owns_session = session is None
        self._lock = threading.Lock()
        self._cache: dict[str, list[str]] = {}
        self.requests_sent = 0
        self.cache_hits = 0
        if spec.cache_path is not None:
            self._cache.update(_read_cache(Path(spec.cache_path)))

    def __enter__(self) -> "LLMJudge":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_session:
            self._session.close()

    def list_objects(self, description: str) -> list[str]:
        """The LLM's object list for one description (cached; [] for an empty one, no request)."""
        if description is None or (isinstance(description, float) and math.isnan(description)):
            description = ""
        if not isinstance(description, str):
            raise TypeError(f"a description must be a string, got {type(description).__name__}")
        if not description.strip():
            return []
        messages = build_messages(description)
        key = cache_key(self.spec, messages)
        with self._lock:
            if key in self._cache:
                self.cache_hits += 1
                return list(self._cache[key])
        content = self._ask(messages)
        try:
            objects = parse_object_list(content)
        except ValueError:
            raise LLMJudgeError(f"{_redact(self.spec.endpoint)} (model {self.spec.model}) answered without a JSON "
                                f"array of strings: {self._scrub(_excerpt(content))!r}") from None
        with self._lock:
            self._cache[key] = objects
            if self.spec.cache_path is not None:
                _append_cache(Path(self.spec.cache_path), {"key": key, "model": self.spec.model,
                                                           "seed": self.spec.seed, "answer": content,
                                                           "objects": objects})
        return list(objects)

    def score(self, candidate: str, reference: str) -> Score:
        """Score a (knocked-out) description against the reference description of the same image."""
        cand, ref = match_object_lists(self.list_objects(candidate), self.list_objects(reference), self.vocabulary)
        return score_sets(cand, ref)

    def judge_table(self, df: pd.DataFrame, candidate_col: str, reference_col: str) -> pd.DataFrame:
        """A copy of ``df`` with ``LLM_SCORE_COLUMNS`` added (one request per distinct description)."""
        check_judge_columns(df, (candidate_col, reference_col), LLM_SCORE_COLUMNS)
        rows = []
        for cand_text, ref_text in zip(df[candidate_col], df[reference_col]):
            cand_objects, ref_objects = self.list_objects(cand_text), self.list_objects(ref_text)
            cand, ref = match_object_lists(cand_objects, ref_objects, self.vocabulary)
            row = score_sets(cand, ref).as_row()
            row["candidate_objects"] = LIST_SEPARATOR.join(cand_objects)
            row["reference_objects"] = LIST_SEPARATOR.join(ref_objects)
            rows.append(row)
        scores = pd.DataFrame(rows, columns=list(LLM_SCORE_COLUMNS), index=df.index)
        log.info("LLM judge %s: %d rows, %d requests, %d cache hits", self.spec.model, len(df),
                 self.requests_sent, self.cache_hits)
        return pd.concat([df, scores], axis=1)

    # --- HTTP -----------------------------------------------------------------------------------

    def _api_key(self) -> str | None:
        name = self.spec.api_key_env
        if name is None:
            return None
        key = os.environ.get(name)
        if not key:
            raise LLMJudgeError(f"environment variable {name} (api_key_env) is not set; it must hold the API key "
                                f"for {_redact(self.spec.endpoint)}")
        return key

    def _scrub(self, text: str) -> str:
        key = os.environ.get(self.spec.api_key_env) if self.spec.api_key_env else None
        return text.replace(key, "***") if key else text

    def _ask(self, messages: list[dict[str, str]]) -> str:
        spec, url = self.spec, self.spec.endpoint
        shown = _redact(url)
        headers = {"Content-Type": "application/json"}
        key = self._api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        del key
        body = {"model": spec.model, "messages": messages, "temperature": spec.temperature,
                "seed": spec.seed, "max_tokens": spec.max_tokens}
        failure = ""
        for attempt in range(spec.retries + 1):
            if attempt:
                time.sleep(spec.backoff * 2 ** (attempt - 1))
            log.debug("LLM judge: POST %s model=%s attempt %d", shown, spec.model, attempt + 1)
            self.requests_sent += 1
            try:
                response = self._session.post(url, json=body, headers=headers, timeout=spec.timeout)
            except requests.RequestException as exc:
                failure = f"{type(exc).__name__}: {self._scrub(str(exc))}"
                log.warning("LLM judge: %s unreachable (attempt %d of %d): %s", shown, attempt + 1,
                            spec.retries + 1, failure)
                continue
            if response.status_code == 429 or response.status_code >= 500:
                failure = f"HTTP {response.status_code}"
                log.warning("LLM judge: %s answered %s (attempt %d of %d)", shown, failure, attempt + 1,
                            spec.retries + 1)
                continue
            if response.status_code != 200:
                raise LLMJudgeError(f"{shown} answered HTTP {response.status_code}: "
                                    f"{self._scrub(_excerpt(response.text))!r}")
            try:
                content = response.json()["choices"][0]["message"]["content"]
                if not isinstance(content, str):
                    raise TypeError("content is not a string")
            except (ValueError, KeyError, IndexError, TypeError):
                raise LLMJudgeError(f"{shown} did not answer with a chat completion "
                                    f"(choices[0].message.content): {self._scrub(_excerpt(response.text))!r}") from None
            return content
        raise LLMJudgeError(f"no answer from {shown} after {spec.retries + 1} attempt(s): {failure}")


def _redact(url: str) -> str:
    """The URL without credentials, query or fragment."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _excerpt(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


@contextlib.contextmanager
def _locked(handle: Any) -> Iterator[None]:
    if fcntl is not None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _read_cache(path: Path) -> dict[str, list[str]]:
    if not path.exists():
        return {}
    cache = {}
    with path.open("r", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                cache[entry["key"]] = list(entry["objects"])
            except (ValueError, KeyError, TypeError):
                log.warning("LLM judge cache %s: skipping unreadable line %d", path, number)
    return cache


def _append_cache(path: Path, entry: dict[str, Any]) -> None:
    """Append one complete line under an exclusive lock; repair a torn last line first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n"
    with path.open("a+b") as handle, _locked(handle):
        handle.seek(0, os.SEEK_END)
        if handle.tell() > 0:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                line = "\n" + line
        handle.write(line.encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())


def spec_summary(spec: LLMJudgeSpec) -> dict[str, Any]:
    """The spec as a dict for provenance files (it holds no secret: only the variable's name)."""
    return {**asdict(spec), "base_url": _redact(spec.base_url)}
