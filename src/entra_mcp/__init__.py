"""entra-mcp: identity context from Microsoft Entra ID for AI service-desk engineers, over MCP."""

__version__ = "0.1.0"

__all__ = ["__version__"]
