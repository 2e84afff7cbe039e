"""The agent daemon: dials out to the hub, keeps a command channel, and
serves its configured roots to admins (``freight ls|cp AGENT:PATH``)."""
