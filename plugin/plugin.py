#!/usr/bin/env python3
"""Launcher for the seed's commands: `python /opt/scripts/plugin.py network|ep`.

The plugin itself is the `calico.plugin` package (console script
`calico-plugin`); this file only hands its arguments to it, so the seed's
`docker run ... calico:plugin python /opt/scripts/plugin.py ep` works as
written.
"""

from calico.plugin.main import main

if __name__ == "__main__":
    main()
