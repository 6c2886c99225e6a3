// h2peer is an HTTP/2 peer that is not ours and not python-hyper's: Go's net/http,
// standard library only, speaking h2c (HTTP/2 with prior knowledge) on loopback.
//
// As a server (the only mode so far) it answers CONNECT by echoing the stream's
// bytes back until the client ends its side, and any other method by echoing the
// request body. It prints "listening HOST:PORT" once it accepts. A line on stdin
// drives it:
//
//	shutdown  graceful Server.Shutdown: GOAWAY, in-flight streams finish
//	close     Server.Close: GOAWAY, then the connections are closed at once
//
// It prints "shutdown done" or "close done" when that returns, and exits on EOF.
package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

func echo(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	_ = rc.EnableFullDuplex()
	w.WriteHeader(http.StatusOK)
	_ = rc.Flush()
	buf := make([]byte, 32*1024)
	for {
		n, err := r.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			_ = rc.Flush()
		}
		if err != nil {
			return // io.EOF: the client ended its side; returning ends ours
		}
	}
}

func main() {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	server := &http.Server{Handler: http.HandlerFunc(echo), Protocols: &protocols}
	go func() { _ = server.Serve(listener) }()
	fmt.Printf("listening %s\n", listener.Addr())

	lines := bufio.NewScanner(os.Stdin)
	for lines.Scan() {
		switch strings.TrimSpace(lines.Text()) {
		case "shutdown":
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				err := server.Shutdown(ctx)
				fmt.Printf("shutdown done %v\n", err)
			}()
		case "close":
			err := server.Close()
			fmt.Printf("close done %v\n", err)
		}
	}
}
