"""Adapters to the libraries explanations are evaluated with: :mod:`bcosify.integrations.captum`
(Captum's ``Attribution`` interface). Each imports its library only when used; a missing one
gets a :class:`~bcosify.BcosifyError` with the pip command."""
