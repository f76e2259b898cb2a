"""Built-in planners, registered through the ``autoseg.planners`` entry-point group (see pyproject.toml)."""
