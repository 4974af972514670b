"""The acquisition daemon: device workers, the typed frame queue, the publisher, device config checks, and the one control server (rights, audit, replies) the reconstruction stage reuses."""
