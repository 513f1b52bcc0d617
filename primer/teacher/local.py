"""The in-process teacher: a transformers checkpoint on this machine, behind the same API.

Used when the teacher ``url`` is a local folder (a Primer export or any ``save_pretrained``
causal LM). Requests run one at a time on a worker thread, seeded, so a given request always
gives the same text.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from primer.teacher.client import ChatRequest


class LocalBackend:
    """One checkpoint, loaded on first use; chat requests (the teacher) and raw prompts
    (``primer serve``'s ``/v1/completions``) go through the same :meth:`_run`."""

    def __init__(self, path: str):
        self.path = path
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Load the checkpoint now (a server fails at start on a bad one, not on a request)."""
        with self._lock:
            self._loaded()

    def _loaded(self) -> tuple[Any, Any]:
        if self._model is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.path)
            self._model = AutoModelForCausalLM.from_pretrained(self.path)
            self._model.eval()
        return self._tokenizer, self._model

    @staticmethod
    def _prompt(tok: Any, messages: list[dict[str, str]]) -> str:
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # A base model has no chat template: a plain transcript ending where it should answer.
        lines = [f"{m['role']}: {m['content']}" for m in messages]
        return "\n".join(lines) + "\nassistant:"

    def _run(self, prompt: str | list[dict[str, str]], max_tokens: int, temperature: float,
             top_p: float | None, seed: int | None, stop: Sequence[str] | None
             ) -> tuple[str, str, int, int]:
        """(text, finish reason, prompt tokens, completion tokens) for a raw prompt or a
        chat (messages); seeded, one at a time."""
        import torch

        with self._lock:
            tok, model = self._loaded()
            text = prompt if isinstance(prompt, str) else self._prompt(tok, prompt)
            inputs = tok(text, return_tensors="pt")
            sample = temperature > 0
            kwargs: dict[str, Any] = {"max_new_tokens": max_tokens, "do_sample": sample,
                                      "pad_token_id": tok.pad_token_id or tok.eos_token_id}
            if sample:
                kwargs["temperature"] = temperature
                if top_p is not None:
                    kwargs["top_p"] = top_p
            torch.manual_seed(seed if seed is not None else 0)
            with torch.no_grad():
                out = model.generate(**inputs, **kwargs)
            new = out[0, inputs["input_ids"].shape[1]:]
            answer = tok.decode(new, skip_special_tokens=True)
            finish = "length" if len(new) >= max_tokens else "stop"
            cuts = [answer.index(s) for s in stop or () if s and s in answer]
            if cuts:
                answer, finish = answer[: min(cuts)], "stop"
            return answer, finish, int(inputs["input_ids"].shape[1]), int(len(new))

    async def generate(self, request: ChatRequest) -> tuple[str, str, int, int]:
        """A chat request: the tokenizer's chat template (or a transcript) then generate."""
        return await asyncio.to_thread(self._run, request.messages, request.max_tokens,
                                       request.temperature, request.top_p, request.seed,
                                       request.stop)

    async def complete(self, prompt: str, max_tokens: int, temperature: float = 1.0,
                       top_p: float | None = None, seed: int | None = None,
                       stop: Sequence[str] | None = None) -> tuple[str, str, int, int]:
        """A raw prompt, continued as is."""
        return await asyncio.to_thread(self._run, prompt, max_tokens, temperature, top_p,
                                       seed, stop)
