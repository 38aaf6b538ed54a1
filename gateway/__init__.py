"""The gateway: modelport's composition root, the top floor of the layering.

The ``modelport`` CLI (``gateway.cli``), ``modelport up`` (``gateway.launcher``), offline
deployment into a model-repository bundle (``gateway.offline``) and ``make demo``
(``gateway.demo``). It is the only package allowed to import all three services; the services
and the shared ``modelport`` package never import it.
"""
