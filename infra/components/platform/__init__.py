"""The platform layer: what the serving stack runs on, installed by the same `pulumi up` (Helm releases
pinned in `infra.charts.CHARTS`, the issuer and the gateway class), and what the serving stack waits for."""

from infra.components.platform.component import Platform, PlatformArgs, PlatformReady

__all__ = ["Platform", "PlatformArgs", "PlatformReady"]
