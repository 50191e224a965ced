"""The device agent: state, pinned transport, trust catch-up, renewal and recovery."""
