"""What every sub-command shares: the error types the CLI prints as one line (user errors: exit 2), the advice
added to the file readers' errors, and silencing the libraries' own progress bars for ``-q``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class CommandError(Exception):
    """An outcome ``moee`` reports in one line, ``moee <command>: <prefix><message>``, exiting with ``exit_code``
    (a traceback only with ``--debug``). Every command raises these; only ``cli.main`` prints them."""

    exit_code = 1
    prefix = ""


class UsageError(CommandError):
    """A problem with the user's input or options: ``moee <command>: error: <message>``, exit code 2."""

    exit_code = 2
    prefix = "error: "


_FLAGS = {".jsonl": "--text-field", ".csv": "--text-column", ".parquet": "--text-column"}


def corpus_problem(exc: Exception, suffix: str, id_field: str | None = None) -> UsageError:
    """A reader's :class:`~moee_plugins.io.CorpusError` as a CLI error, with the flag that fixes it."""
    message = str(exc)
    field = getattr(exc, "field", None)
    if getattr(exc, "kind", None) == "field" and field is not None:
        flag = "--id-field" if field == id_field else _FLAGS.get(suffix)
        if flag is not None:
            message += f" (choose another with {flag})"
    return UsageError(message)


@contextlib.contextmanager
def quiet_libraries(quiet: bool = True) -> Iterator[None]:
    """Hide transformers', Hugging Face Hub's, datasets' and every other tqdm bar while the block runs."""
    if not quiet:
        yield
        return
    restore: list[Any] = []
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - a core dependency
        pass
    else:
        if hf_logging.is_progress_bar_enabled():
            hf_logging.disable_progress_bar()
            restore.append(hf_logging.enable_progress_bar)
    try:
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    except ImportError:  # pragma: no cover
        pass
    else:
        if not are_progress_bars_disabled():
            disable_progress_bars()
            restore.append(enable_progress_bars)
    with contextlib.suppress(ImportError):
        import datasets

        if datasets.is_progress_bar_enabled():
            datasets.disable_progress_bars()
            restore.append(datasets.enable_progress_bars)
    # every other bar (BERTopic's, UMAP's, ...): tqdm reads TQDM_DISABLE only when imported, so switch each new
    # bar off for the duration of the command instead
    import tqdm.std

    original = tqdm.std.tqdm.__init__

    def silent(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        original(self, *args, **kwargs)

    tqdm.std.tqdm.__init__ = silent  # type: ignore[method-assign]
    try:
        yield
    finally:
        tqdm.std.tqdm.__init__ = original  # type: ignore[method-assign]
        for undo in reversed(restore):
            undo()
