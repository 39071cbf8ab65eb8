"""Token-level stop conditions, checked after each sampled token (stop strings live in the AsyncEngine)."""

from __future__ import annotations

from forgellm.engine.request import Request, RequestStatus


def check_stop(request: Request, token_id: int, max_model_len: int) -> bool:
    """After `token_id` was appended: set the finished status and stop_reason if it ends; return True then.

    Order: EOS, then stop_token_ids (both only once min_tokens outputs exist), then max_tokens and
    max_model_len.
    """
    num_output = request.num_output_tokens
    params = request.sampling_params
    if num_output >= params.min_tokens:
        if token_id in request.eos_token_ids and not params.ignore_eos:
            request.status = RequestStatus.FINISHED_STOPPED
            request.stop_reason = None
            return True
        if params.stop_token_ids and token_id in params.stop_token_ids:
            request.status = RequestStatus.FINISHED_STOPPED
            request.stop_reason = token_id
            return True
    grammar = request.grammar
    if grammar is not None and (grammar.is_terminated or grammar.rejected_token is not None):
        # The constrained output is complete (or a token the grammar refused was forced in): nothing may follow.
        request.status = RequestStatus.FINISHED_STOPPED
        request.stop_reason = None
        return True
    if reaches_length(request, request.num_tokens, max_model_len):
        request.status = RequestStatus.FINISHED_LENGTH
        return True
    return False


def reaches_length(request: Request, num_tokens: int, max_model_len: int) -> bool:
    """True when `num_tokens` tokens (prompt + output) reach max_tokens or max_model_len."""
    return num_tokens - request.num_prompt_tokens >= request.max_tokens or num_tokens >= max_model_len
