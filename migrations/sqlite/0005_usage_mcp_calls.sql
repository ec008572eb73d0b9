-- MCP tool calls the gateway ran for a request.
ALTER TABLE usage ADD COLUMN mcp_calls INTEGER NOT NULL DEFAULT 0;
