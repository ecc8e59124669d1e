"""``[notify]``: notifications through Apprise (mail, Slack, Teams, JSON webhooks, ...).

:mod:`.notifier` runs it beside the engine (``notifying``), :mod:`.events` finds what is
news and digests it, :mod:`.sender` sends, :mod:`.urls` keeps the URLs' credentials out of
every log. Nothing is imported here: the config check needs only :mod:`.urls`, and must
not pay for the engine's modules.
"""
