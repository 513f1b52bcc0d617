"""The in-process teacher: a transformers checkpoint on this machine, behind the same API.

Used when the teacher ``url`` is a local folder (a Primer export or any ``save_pretrained``
causal LM). Requests run one at a time on a worker thread, seeded, so a given request always
gives the same text.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from primer.teacher.client import ChatRequest


class LocalBackend:
    def __init__(self, path: str):
        self.path = path
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(self.path)
        self._model = AutoModelForCausalLM.from_pretrained(self.path)
        self._model.eval()

    def _prompt(self, messages: list[dict[str, str]]) -> str:
        tok = self._tokenizer
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # A base model has no chat template: a plain transcript ending where it should answer.
        lines = [f"{m['role']}: {m['content']}" for m in messages]
        return "\n".join(lines) + "\nassistant:"

    def _generate(self, request: ChatRequest) -> tuple[str, str, int, int]:
        import torch

        with self._lock:
            if self._model is None:
                self._load()
            tok, model = self._tokenizer, self._model
            inputs = tok(self._prompt(request.messages), return_tensors="pt")
            sample = request.temperature > 0
            kwargs: dict[str, Any] = {"max_new_tokens": request.max_tokens,
                                      "do_sample": sample,
                                      "pad_token_id": tok.pad_token_id or tok.eos_token_id}
            if sample:
                kwargs["temperature"] = request.temperature
                if request.top_p is not None:
                    kwargs["top_p"] = request.top_p
            torch.manual_seed(request.seed if request.seed is not None else 0)
            with torch.no_grad():
                out = model.generate(**inputs, **kwargs)
            new = out[0, inputs["input_ids"].shape[1]:]
            text = tok.decode(new, skip_special_tokens=True)
            finish = "length" if len(new) >= request.max_tokens else "stop"
            for stop in request.stop or ():
                if stop in text:
                    text, finish = text[: text.index(stop)], "stop"
            return text, finish, int(inputs["input_ids"].shape[1]), int(len(new))

    async def generate(self, request: ChatRequest) -> tuple[str, str, int, int]:
        return await asyncio.to_thread(self._generate, request)
