"""An OAuth 2.1 authorization server for MCP clients in front of /mcp (server.auth.mode = "oauth", docs/oauth.md).

People sign in with Entra through the product's own sign-in (oidc/) and approve the client on a consent page; the
MCP SDK's authorization-server handlers do the protocol, `provider.AuthorizationServer` keeps the state in the
SessionStore, `clients` knows the clients (Dynamic Client Registration, Client ID Metadata Documents)."""

from entra_mcp.oauth.provider import AuthorizationServer, Grant
from entra_mcp.oauth.routes import OAuthRoutes

__all__ = ["AuthorizationServer", "Grant", "OAuthRoutes"]
