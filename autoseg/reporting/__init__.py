"""The run report (`autoseg report`): what a work folder holds, read (``collect``), drawn (``figures``) and
written as one self-contained HTML page (``html``, ``sections``, ``build``)."""
