"""LLM: the offline, synchronous Python API (vLLM-style names)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from forgellm.config import EngineConfig
from forgellm.engine.input_processor import Prompt
from forgellm.engine.llm_engine import LLMEngine
from forgellm.errors import InvalidRequestError
from forgellm.hf.tokenizer import Tokenizer
from forgellm.multimodal.chat_content import refuse_images_for_text_only_model, split_images
from forgellm.outputs import RequestOutput
from forgellm.sampling_params import SamplingParams

Message = dict[str, Any]


def _as_prompt_list(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    if isinstance(prompts, (str, Mapping)) or not isinstance(prompts, Sequence):
        return [prompts]  # one text, one {"prompt": ...} / {"prompt_token_ids": ...}, or a bad value to refuse
    prompts = list(prompts)
    if prompts and all(isinstance(p, int) for p in prompts):
        return [prompts]  # one prompt given as token ids
    return prompts


class LLM:
    """Load a model once, then `generate`, `chat` or `stream` with it.

    `LLM()` runs the embedded demo model; `LLM("path/to/hf_checkpoint", dtype="bfloat16", ...)`
    takes any EngineConfig option as a keyword.
    """

    def __init__(self, model: str | None = None, *, config: EngineConfig | None = None, **kwargs: Any) -> None:
        if config is None:
            config = EngineConfig(model=model, **kwargs)
        elif model is not None or kwargs:
            raise InvalidRequestError("pass either config=EngineConfig(...) or model/keyword options, not both")
        self.config = config
        self.engine = LLMEngine(config)
        self._ids = itertools.count()

    def get_tokenizer(self) -> Tokenizer:
        return self.engine.tokenizer

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
        priority: Sequence[int] | None = None,
    ) -> list[RequestOutput]:
        """Generate for every prompt; returns outputs in prompt order.

        A prompt is text, token ids, or vLLM's {"prompt": text} / {"prompt_token_ids": ids} dict.
        All prompts are validated before any is queued, so one bad prompt raises and runs nothing.
        A prompt the engine fails to serve comes back with finish_reason "error" and `error` set.
        """
        prompt_list = _as_prompt_list(prompts)
        if isinstance(sampling_params, SamplingParams) or sampling_params is None:
            params_list = [sampling_params] * len(prompt_list)
        else:
            params_list = list(sampling_params)
            if len(params_list) != len(prompt_list):
                raise InvalidRequestError(
                    f"got {len(params_list)} sampling_params for {len(prompt_list)} prompts", "sampling_params"
                )
        priorities = list(priority) if priority is not None else [0] * len(prompt_list)
        processed = [self.engine.process(p, sp) for p, sp in zip(prompt_list, params_list)]
        ids = [str(next(self._ids)) for _ in processed]
        for request_id, item, prio in zip(ids, processed, priorities):
            self.engine.add_request(request_id, item, priority=prio)
        return self._run(ids, use_tqdm)

    def chat(
        self,
        messages: list[Message] | Sequence[list[Message]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
        tools: list[dict[str, Any]] | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> list[RequestOutput]:
        """Render each conversation with the model's chat template (`tools` and `chat_template_kwargs` go to the
        template), then generate. Image content parts ({"type": "image_url", ...} or {"type": "image",
        "image": ...}) go to a vision-language model with the prompt."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        prompts = [
            self.chat_prompt(c, add_generation_prompt, chat_template, tools, chat_template_kwargs)
            for c in conversations
        ]
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def chat_prompt(
        self,
        messages: list[Message],
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
        tools: list[dict[str, Any]] | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> Prompt:
        """The prompt of a conversation: its rendered token ids, with multi_modal_data when it holds image parts
        (those become the template's placeholders)."""
        rendered, images = split_images(messages, self.engine.media_policy)
        if images and self.engine.input_processor.vision is None:
            refuse_images_for_text_only_model()
        ids = self.render_chat(rendered, add_generation_prompt, chat_template, tools, chat_template_kwargs)
        return {"prompt_token_ids": ids, "multi_modal_data": {"image": images}} if images else ids

    def render_chat(
        self,
        messages: list[Message],
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
        tools: list[dict[str, Any]] | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> list[int]:
        """Token ids of a conversation rendered with the chat template (which adds its own BOS)."""
        tokenizer = self.engine.tokenizer
        text = tokenizer.apply_chat_template(
            messages,
            add_generation_prompt=add_generation_prompt,
            chat_template=chat_template,
            tools=tools,
            **(chat_template_kwargs or {}),
        )
        return tokenizer.encode(text, add_special_tokens=False)

    def stream(self, prompt: Prompt, sampling_params: SamplingParams | None = None) -> Iterator[RequestOutput]:
        """Yield the cumulative RequestOutput of one request after every step until it finishes."""
        request_id = str(next(self._ids))
        self.engine.add_request(request_id, prompt, sampling_params, stream=True)
        try:
            finished = False
            while not finished:
                for out in self.engine.step():
                    if out.request_id == request_id:
                        finished = out.finished
                        yield out
        finally:
            if not finished:  # the caller stopped iterating early: free the request's blocks
                self.engine.abort_request(request_id)

    def _run(self, request_ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        results: dict[str, RequestOutput] = {}
        bar = _progress_bar(len(request_ids)) if use_tqdm and len(request_ids) > 1 else None
        try:
            while len(results) < len(request_ids):
                for out in self.engine.step():
                    if out.finished:
                        results[out.request_id] = out
                        if bar is not None:
                            bar.update(1)
        except BaseException:
            for request_id in request_ids:  # leave the engine clean for the next call
                if request_id not in results:
                    self.engine.abort_request(request_id)
            raise
        finally:
            if bar is not None:
                bar.close()
        return [results[request_id] for request_id in request_ids]


def _progress_bar(total: int):  # noqa: ANN202 - a tqdm bar, or None without tqdm
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm comes with the bench/dev extras; the core runs without it
        return None
    return tqdm(total=total, desc="generating", unit="req")
