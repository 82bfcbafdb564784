"""The .mlo compiler: ``front/`` (text -> checked IR, torch-free) and ``back/`` (checked IR ->
runtime objects and an ExecutionPlan); ``ir.py`` is what they share, ``api.py`` runs both."""
