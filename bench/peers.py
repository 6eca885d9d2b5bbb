"""LiteLLM's proxy as a peer on the same fake upstream, in a virtualenv of its own.

The bench makes the virtualenv under a cache folder (~/.cache/foundry-proxy-bench, or
$XDG_CACHE_HOME) the first time and reuses it; when LiteLLM cannot be installed the comparison
is skipped with the reason printed, and the rest of the run goes on.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SPEC = "litellm[proxy]"
MASTER_KEY = "sk-bench-master-key"  # what LiteLLM requires of its clients (it refuses none)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "foundry-proxy-bench"


def litellm_command() -> tuple[Path | None, str]:
    """The `litellm` executable, installing it first if needed; or None and why not."""
    venv = cache_dir() / "litellm-venv"
    exe = venv / "bin" / "litellm"
    if exe.exists():
        return exe, ""
    print(f"installing {SPEC} into {venv} (once)", file=sys.stderr, flush=True)
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300
        )
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", SPEC],
            check=True,
            capture_output=True,
            text=True,
            timeout=1800,
        )
    except subprocess.CalledProcessError as exc:
        tail = (exc.stderr or "").strip().splitlines()[-1:] or [f"exit {exc.returncode}"]
        return None, f"pip install {SPEC} failed: {tail[0]}"
    except (subprocess.TimeoutExpired, OSError) as exc:
        return None, f"pip install {SPEC} failed: {exc}"
    return (exe, "") if exe.exists() else (None, f"{SPEC} installed no litellm command")


def litellm_config(path: Path, upstream: str) -> None:
    """One model, gpt-4o-mini, on the bench's nginx upstream (OpenAI's API shape)."""
    path.write_text(
        f"""model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: {upstream}/openai/v1
      api_key: bench-upstream-key
general_settings:
  master_key: {MASTER_KEY}
litellm_settings:
  telemetry: false
"""
    )


def litellm_env() -> dict[str, str]:
    # The model cost map is read from the package instead of being fetched at start.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "OPENAI_"))}
    return clean | {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
