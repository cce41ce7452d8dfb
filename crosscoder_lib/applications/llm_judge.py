"""An LLM as the judge of the held-out assignment protocol: prompts, answers, the client.

:class:`LLMJudge` implements :class:`crosscoder_lib.applications.judge.Judge` with any
OpenAI-compatible chat model (the paper used GPT-4o). It is used only when a key is configured;
without one, the protocol runs with the offline judge
(:class:`~crosscoder_lib.applications.judge.OfflineJudge`).
"""

from __future__ import annotations

import os
import re


class LLMJudgeUnavailable(RuntimeError):
    """The LLM judge cannot run here: no API key configured, or the ``openai`` package missing."""


_SYSTEM_PROMPT = (
    "You help evaluate how features inside a language model group together. Every feature comes "
    "with a short explanation of the tokens that make it fire. You will be shown numbered options "
    "and must say which option fits. Reply with the option's number only, nothing else."
)


def _chat(user: str) -> list[dict]:
    return [{"role": "system", "content": _SYSTEM_PROMPT}, {"role": "user", "content": user}]


class LLMJudge:
    """Judge backed by an OpenAI-compatible chat-completions endpoint.

    The client is made only when the judge is constructed, from ``api_key`` or the
    ``OPENAI_API_KEY`` environment variable (``base_url`` selects any compatible server); the
    ``openai`` package is imported then, not before. Pass ``client=`` to use a ready client (any
    object with ``client.chat.completions.create(model=, messages=, temperature=)``). Options are
    numbered from 1 in the prompt; the first integer of the reply is the answer, and a reply
    without a valid number gives -1. Every prompt and reply is kept in ``transcript``.
    """

    def __init__(
        self,
        model: str = "gpt-4o-mini",
        api_key: str | None = None,
        base_url: str | None = None,
        temperature: float = 0.0,
        client=None,
    ):
        if client is None:
            key = api_key or os.environ.get("OPENAI_API_KEY")
            if not key:
                raise LLMJudgeUnavailable(
                    "LLMJudge needs an API key: set the OPENAI_API_KEY environment variable or pass "
                    "api_key=... (and base_url=... for a non-OpenAI server); without one, use "
                    "OfflineJudge()"
                )
            try:
                import openai
            except ImportError as e:
                raise LLMJudgeUnavailable(
                    "LLMJudge needs the 'openai' package: pip install openai (or use OfflineJudge())"
                ) from e
            client = openai.OpenAI(api_key=key, base_url=base_url)
        self.client, self.model, self.temperature = client, model, temperature
        self.transcript: list[tuple[list[dict], str]] = []

    @staticmethod
    def choose_prompt(explanation: str, candidates: list[list[str]]) -> list[dict]:
        """Chat messages asking which candidate cluster the explanation belongs to."""
        blocks = "\n\n".join(
            f"Group {i + 1}:\n" + "\n".join(f"- {e}" for e in c) for i, c in enumerate(candidates)
        )
        return _chat(
            f"Explanation of one feature:\n{explanation}\n\n"
            f"Groups of features, each described by its members' explanations:\n\n{blocks}\n\n"
            f"Which group (1-{len(candidates)}) does the feature belong to?"
        )

    @staticmethod
    def choose_member_prompt(cluster: list[str], tests: list[str]) -> list[dict]:
        """Chat messages asking which test explanation belongs to the cluster."""
        members = "\n".join(f"- {e}" for e in cluster)
        options = "\n".join(f"{i + 1}: {t}" for i, t in enumerate(tests))
        return _chat(
            f"Explanations of the features in one group:\n{members}\n\n"
            f"Candidate explanations, exactly one of which belongs to the group:\n{options}\n\n"
            f"Which candidate (1-{len(tests)}) belongs to the group?"
        )

    @staticmethod
    def parse_answer(reply: str | None, n_options: int) -> int:
        """0-based option from a reply (first integer, numbered from 1); -1 if there is none valid."""
        m = re.search(r"\d+", reply or "")
        if m is None:
            return -1
        k = int(m.group()) - 1
        return k if 0 <= k < n_options else -1

    def _ask(self, messages: list[dict]) -> str:
        resp = self.client.chat.completions.create(
            model=self.model, messages=messages, temperature=self.temperature
        )
        reply = resp.choices[0].message.content or ""
        self.transcript.append((messages, reply))
        return reply

    def choose(self, explanation: str, candidates: list[list[str]]) -> int:
        return self.parse_answer(self._ask(self.choose_prompt(explanation, candidates)), len(candidates))

    def choose_member(self, cluster: list[str], tests: list[str]) -> int:
        return self.parse_answer(self._ask(self.choose_member_prompt(cluster, tests)), len(tests))
