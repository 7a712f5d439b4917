// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "installer-webhooks",
    products: [
        .executable(name: "webhook-fcgi", targets: ["webhook-fcgi"]),
        .executable(name: "webhook-loadtest", targets: ["webhook-loadtest"]),
        .executable(name: "webhook-worker", targets: ["webhook-worker"]),
        .library(name: "WebhookCore", targets: ["WebhookCore"]),
    ],
    targets: [
        .systemLibrary(
            name: "CFastCGI",
            pkgConfig: "fcgi",
            providers: [.apt(["libfcgi-dev"])]
        ),
        .systemLibrary(
            name: "COpenSSL",
            pkgConfig: "libcrypto",
            providers: [.apt(["libssl-dev"])]
        ),
        .systemLibrary(name: "CSystem"),
        .target(name: "WebhookCore", dependencies: ["COpenSSL", "CSystem"]),
        .target(name: "WorkerCore", dependencies: ["WebhookCore", "WebhookClient", "CSystem"]),
        .target(name: "WebhookClient", dependencies: ["WebhookCore"]),
        .executableTarget(name: "webhook-fcgi", dependencies: ["WebhookCore", "CFastCGI"]),
        .executableTarget(name: "webhook-loadtest", dependencies: ["WebhookCore", "WebhookClient"]),
        .executableTarget(name: "webhook-worker", dependencies: ["WorkerCore", "WebhookCore", "WebhookClient"]),
        .target(name: "WebhookTestSupport", dependencies: ["WebhookCore", "WebhookClient"], path: "Tests/Support"),
        .testTarget(
            name: "WebhookCoreTests",
            dependencies: ["WebhookCore", "WebhookClient", "WebhookTestSupport"],
            resources: [.copy("Fixtures")]
        ),
        .testTarget(
            name: "WorkerTests",
            dependencies: ["WorkerCore", "WebhookCore", "WebhookClient", "WebhookTestSupport", "webhook-worker", "webhook-fcgi"]
        ),
        .testTarget(
            name: "EndToEndTests",
            dependencies: ["WebhookCore", "WebhookClient", "WebhookTestSupport", "WorkerCore", "webhook-fcgi", "webhook-loadtest", "webhook-worker"]
        ),
    ]
)

for target in package.targets where target.type != .system {
    target.swiftSettings = (target.swiftSettings ?? []) + [
        .enableUpcomingFeature("ExistentialAny"),
        .enableUpcomingFeature("InternalImportsByDefault"),
    ]
}
