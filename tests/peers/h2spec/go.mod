// h2spec (github.com/summerwind/h2spec), the HTTP/2 conformance tester, built by
// tests/integration/test_h2spec.py: `go build -o BIN github.com/summerwind/h2spec/cmd/h2spec`
// in this directory (the `tool` line below makes that possible without a main.go).
// v2.2.1 is its latest release. It predates modules, so its dependencies are pinned
// here: the newest that build with Go 1.24, as tests/peers/h2peer asks (x/net v0.50.0;
// later ones want Go 1.25). After changing one: `go mod tidy` here, commit go.sum.
module ambit.test/h2spec

go 1.24.0

tool github.com/summerwind/h2spec/cmd/h2spec

require (
	github.com/fatih/color v1.18.0 // indirect
	github.com/inconshreveable/mousetrap v1.1.0 // indirect
	github.com/mattn/go-colorable v0.1.13 // indirect
	github.com/mattn/go-isatty v0.0.20 // indirect
	github.com/spf13/cobra v1.8.1 // indirect
	github.com/spf13/pflag v1.0.5 // indirect
	github.com/summerwind/h2spec v2.2.1+incompatible // indirect
	golang.org/x/net v0.50.0 // indirect
	golang.org/x/sys v0.41.0 // indirect
	golang.org/x/text v0.34.0 // indirect
)
