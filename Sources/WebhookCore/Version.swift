// The one version number of the three programs and the Debian package
// (scripts/package reads it from this line).
/// The release, as `--version` prints it.
public let installerWebhooksVersion = "0.2.0"
