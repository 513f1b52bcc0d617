"""Synthetic textbooks and exercises from a teacher LLM (phi-1's second pillar).

- ``taxonomy``: the topic taxonomy (``data/topics.yaml``) and the seeded spec stream;
- ``prompts``: templates (``prompts/*.txt``) rendered into chat requests;
- ``validate`` and ``neardup``: keep / drop-with-reason checks;
- ``batch``: the work unit (one batch of specs → one shard);
- ``run``: rounds of units until ``count`` valid records, then the commit;
- ``report``: the diversity report; ``cli``: ``primer generate``.
"""
