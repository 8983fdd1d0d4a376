"""``cowrie-stats mcp``: the statistics API as tools for AI assistants (Model Context Protocol).

The MCP server is a client of the gRPC API (:class:`cowrie_stats.client.StatsClient`,
configured like ``cowrie-stats query``) and never opens the database: authentication,
replica routing, caching and limits stay in the gRPC server. Layers:

* :mod:`.tools` -- one :class:`~.tools.ToolSpec` per statistics RPC: its arguments, its
  call and its description. A new RPC is one more entry in :data:`~.tools.TOOLS`.
* :mod:`.render` -- what a tool returns: the response as protobuf's JSON mapping
  (structured content), an output schema derived from the response message, a text
  summary that quotes attacker-written values as escaped, marked data, and errors in words.
* :mod:`.server` -- the MCP handlers (tools, the sensors resource, the briefing prompt)
  and the two transports, stdio and streamable HTTP.
* :mod:`.command` -- the subcommand's options; it imports the SDK only when run, so the
  core service works without the optional extra ``cowrie-stats[mcp]``.
"""
