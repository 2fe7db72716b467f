"""Session backends for agent frameworks, over :class:`~chatledger.aio.AsyncChatLedger`.

:mod:`.agents` (OpenAI Agents SDK, ``pip install 'chatledger[agents]'``) and :mod:`.adk`
(Google ADK, ``pip install 'chatledger[adk]'``). Neither is imported here: each needs its
framework installed. They call the async facade only (a contract in pyproject.toml).
"""
