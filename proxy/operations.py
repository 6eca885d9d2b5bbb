"""The operations Azure serves, allowed or not, and which of them a mistaken path meant.

A path that none of these operations (nor an allow rule) matches is a mistake, most likely a
typo, rather than a policy question: policy.py answers it with 404 naming the closest of them,
never with a 403 telling the operator to allow it. Standard library only, like rewrite.py.
"""

from __future__ import annotations

from difflib import SequenceMatcher

#: Inference operations, relative to /openai/v1 and to a deployment under /openai.
INFERENCE = (
    "chat/completions",
    "completions",
    "embeddings",
    "audio/transcriptions",
    "audio/translations",
    "audio/speech",
    "images/generations",
    "images/edits",
)

# Claude's Messages API, as Foundry serves it under /anthropic/v1 (docs/claude.md): both are
# inference, and count_tokens is what Claude Code calls to size its context.
ANTHROPIC = ("messages", "messages/count_tokens")


# Entries are "METHODS pattern"; a "**" pattern stands for a whole family of sub-resources.

#: The OpenAI-style data plane, relative to /openai/v1 (also served under /openai with an
#: api-version, and under /api/projects/{project}/openai/v1).
_OPENAI_KNOWN = (
    "POST,GET chat/completions",
    "GET,POST,DELETE chat/completions/*",
    "GET chat/completions/*/messages",
    "POST completions",
    "POST embeddings",
    "POST audio/transcriptions",
    "POST audio/translations",
    "POST audio/speech",
    "POST images/generations",
    "POST images/edits",
    "POST images/variations",
    "POST responses",
    "POST responses/input_tokens",
    "GET,DELETE responses/*",
    "POST responses/*/cancel",
    "GET responses/*/input_items",
    "POST conversations",
    "GET,POST,DELETE conversations/*",
    "GET,POST conversations/*/items",
    "GET,DELETE conversations/*/items/*",
    "GET realtime",
    "POST realtime/sessions",
    "POST realtime/transcription_sessions",
    "POST realtime/client_secrets",
    "GET models",
    "GET,DELETE models/*",
    "GET,POST files",
    "GET,DELETE files/*",
    "GET files/*/content",
    "POST uploads",
    "POST uploads/*/parts",
    "POST uploads/*/complete",
    "POST uploads/*/cancel",
    "GET,POST batches",
    "GET batches/*",
    "POST batches/*/cancel",
    "GET,POST fine_tuning/jobs",
    "GET fine_tuning/jobs/*",
    "POST fine_tuning/jobs/*/cancel",
    "POST fine_tuning/jobs/*/pause",
    "POST fine_tuning/jobs/*/resume",
    "GET fine_tuning/jobs/*/events",
    "GET fine_tuning/jobs/*/checkpoints",
    "GET,POST assistants",
    "GET,POST,DELETE assistants/*",
    "POST threads",
    "POST threads/runs",
    "GET,POST,DELETE threads/*",
    "GET,POST threads/*/messages",
    "GET,POST,DELETE threads/*/messages/*",
    "GET,POST threads/*/runs",
    "GET,POST threads/*/runs/*",
    "POST threads/*/runs/*/cancel",
    "POST threads/*/runs/*/submit_tool_outputs",
    "GET threads/*/runs/*/steps",
    "GET threads/*/runs/*/steps/*",
    "GET,POST vector_stores",
    "GET,POST,DELETE vector_stores/*",
    "POST vector_stores/*/search",
    "GET,POST vector_stores/*/files",
    "GET,POST,DELETE vector_stores/*/files/*",
    "GET vector_stores/*/files/*/content",
    "POST vector_stores/*/file_batches",
    "GET vector_stores/*/file_batches/*",
    "POST vector_stores/*/file_batches/*/cancel",
    "GET vector_stores/*/file_batches/*/files",
    "GET,POST evals",
    "GET,POST,DELETE evals/*",
    "GET,POST evals/*/runs",
    "GET,POST,DELETE evals/*/runs/*",
    "GET evals/*/runs/*/output_items",
    "GET evals/*/runs/*/output_items/*",
    "GET,POST containers",
    "GET,DELETE containers/*",
    "GET,POST containers/*/files",
    "GET,DELETE containers/*/files/*",
    "GET containers/*/files/*/content",
    "GET,POST videos",
    "GET,DELETE videos/*",
    "GET videos/*/content",
    "GET,POST video/generations/jobs",
    "GET,DELETE video/generations/jobs/*",
    "GET video/generations/*/content/**",
)
#: The Foundry project API's own collections, under /api/projects/{project}.
_PROJECT_COLLECTIONS = (
    "deployments",
    "connections",
    "datasets",
    "indexes",
    "evaluations",
    "evaluators",
    "redTeams",
    "agents",
    "assistants",
    "threads",
    "files",
    "vector_stores",
    "conversations",
    "memory_stores",
    "schedules",
    "insights",
)
#: Every operation Azure serves, as "METHODS /upstream/pattern".
KNOWN_OPERATIONS: tuple[str, ...] = (
    *(f"{op.split()[0]} /openai/v1/{op.split()[1]}" for op in _OPENAI_KNOWN),
    *(f"{op.split()[0]} /openai/{op.split()[1]}" for op in _OPENAI_KNOWN),
    *(f"{op.split()[0]} /api/projects/*/openai/v1/{op.split()[1]}" for op in _OPENAI_KNOWN),
    "GET /openai/deployments",
    "GET /openai/deployments/*",
    *(f"POST /openai/deployments/*/{op}" for op in INFERENCE),
    "POST /openai/deployments/*/extensions/chat/completions",
    "POST /models/chat/completions",
    "POST /models/embeddings",
    "POST /models/images/embeddings",
    "GET /models/info",
    *(f"GET,POST,DELETE /api/projects/*/{c}/**" for c in _PROJECT_COLLECTIONS),
    *(f"POST /anthropic/v1/{op}" for op in ANTHROPIC),
)


# Local path prefixes (rewrite.py's route families), for suggestions in the client's own terms.
_FAMILIES = ("/v1/", "/openai/", "/models/", "/api/projects/", "/anthropic/")
# Suggestions compare at most this much of a path: enough for any real operation, and a long
# path cannot make the comparison expensive.
_SUGGEST_CHARS = 200
_SUGGEST_CACHE = 256
# Similarity (difflib's ratio) from which a known operation is taken for what was meant: a slip
# of a letter or a segment scores 0.9 and more, unrelated paths 0.6 and less.
_CLOSE_ENOUGH = 0.75


def _local_forms(pattern: str) -> list[str]:
    """The local paths a known upstream pattern is reached by (``/v1/`` is ``/openai/v1/``)."""
    if pattern.startswith("/openai/v1/"):
        return ["/v1/" + pattern.removeprefix("/openai/v1/"), pattern]
    return [pattern]


def _fill(pattern: tuple[str, ...], segments: list[str], alike: dict[str, bool]) -> str:
    """The pattern with "**" dropped and each "*" taken from the client's path where the path
    agrees with the pattern up to there (its deployment or ids), else written ``{id}``.
    ``alike`` remembers segment comparisons across the patterns of one search."""
    out = []
    agrees = True
    for i, part in enumerate(pattern):
        if part == "**":
            break
        if part == "*":
            part = segments[i] if agrees and i < len(segments) and segments[i] else "{id}"
        elif agrees:
            if i >= len(segments):
                agrees = False
            elif part != segments[i]:
                key = f"{i}/{part}"
                same = alike.get(key)
                if same is None:
                    same = alike[key] = _alike(part, segments[i])
                agrees = same
        out.append(part)
    return "/".join(out)


def _alike(known: str, given: str) -> bool:
    """A slip of the same path segment (case, a letter or two: "thread", "Files")."""
    if known.lower() == given.lower():
        return True
    if abs(len(known) - len(given)) > 3:
        return False
    return SequenceMatcher(None, known.lower(), given.lower()).ratio() >= 0.75


class OperationSuggester:
    """Finds the known operation a mistaken ``METHOD path`` most likely meant."""

    def __init__(self) -> None:
        self._suggestions: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = tuple(
            (
                next(f for f in _FAMILIES if local.startswith(f)),
                tuple(local.split("/")),
                tuple(methods.split(",")),
            )
            for methods, pattern in (op.split() for op in KNOWN_OPERATIONS)
            for local in _local_forms(pattern)
        )
        # A client that keeps sending the same wrong path is answered from here.
        self._closest: dict[tuple[str, str], tuple[str, bool]] = {}

    def closest(self, method: str, local_path: str) -> tuple[str, bool]:
        """The known operation most like ``METHOD local_path``, as ``"METHOD /path"`` in the
        client's terms (its route family, its deployment and ids filled in), and whether it
        is close enough to be what was meant. Costs a millisecond or a few, so only answers
        to mistakes call it, and repeats come from a cache."""
        path = local_path[:_SUGGEST_CHARS]
        key = (method, path)
        found = self._closest.get(key)
        if found is None:
            if len(self._closest) >= _SUGGEST_CACHE:
                self._closest.clear()  # bounded; a client cycling paths gains nothing
            found = self._closest[key] = self._find_closest(method, path)
        return found

    def _find_closest(self, method: str, path: str) -> tuple[str, bool]:
        family = next((f for f in _FAMILIES if path.startswith(f)), None)
        segments = path.split("/")
        alike: dict[str, bool] = {}
        matcher = SequenceMatcher(None, autojunk=False)
        matcher.set_seq2(path)
        best, best_score = "", -1.0
        best_methods: tuple[str, ...] = ("GET",)
        for known_family, pattern, methods in self._suggestions:
            if family is not None and known_family != family:
                continue
            text = _fill(pattern, segments, alike)
            matcher.set_seq1(text)
            # The method counts as much as a path character or three: it settles near-ties.
            bonus = 0.05 if method in methods else 0.0
            # The cheap upper bounds first, as difflib.get_close_matches does.
            if (
                matcher.real_quick_ratio() + bonus <= best_score
                or matcher.quick_ratio() + bonus <= best_score
            ):
                continue
            score = matcher.ratio() + bonus
            if score > best_score:
                best, best_methods, best_score = text, methods, score
        chosen = method if method in best_methods else best_methods[0]
        return f"{chosen} {best}", best_score >= _CLOSE_ENOUGH
