// Command tributary is the service-discovery federation server and its CLI.
//
//	tributary serve --config FILE      run the server
//	tributary watch AUTHORITY          print a Get stream as a proxy sees it
//	tributary check FILE...            validate a config or services file
//	tributary version                  print the version
package main

import (
	"fmt"
	"os"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

const usage = `usage: tributary <command> [flags]

commands:
  serve --config FILE [--listen ADDR] [--admin ADDR]
        run the server (destination gRPC API and admin HTTP)
  watch AUTHORITY [--addr ADDR] [--admin ADDR] [--json] [--profile] [--token TOKEN]
        print the stream a proxy receives for AUTHORITY (host:port)
  check FILE...
        validate Tributary config files or services files; errors as file:line
  version
        print the version

Run 'tributary <command> -h' for a command's flags.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	args := os.Args[2:]
	var code int
	switch os.Args[1] {
	case "serve":
		code = serveCmd(args)
	case "watch":
		code = watchCmd(args)
	case "check":
		code = checkCmd(args)
	case "version", "--version", "-version":
		fmt.Println("tributary", version)
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "tributary: unknown command %q\n\n%s", os.Args[1], usage)
		code = 2
	}
	os.Exit(code)
}
