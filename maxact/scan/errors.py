"""Exceptions of the scan driver that the CLI turns into one-line messages and exit codes."""

from __future__ import annotations


class ScanError(Exception):
    """A problem with the user's input (model, tokenizer, corpus, flags): one line, exit code 2."""

    exit_code = 2


class ScanInterrupted(Exception):
    """SIGINT/SIGTERM arrived; the state was checkpointed (when an output directory is set)."""

    exit_code = 130

    def __init__(self, message: str, checkpoint_path: str | None = None):
        super().__init__(message)
        self.checkpoint_path = checkpoint_path
