"""Structured output: constraints on what a request may generate (JSON schema, regex, grammar, choice),
compiled by xgrammar into token masks the sampler applies."""
