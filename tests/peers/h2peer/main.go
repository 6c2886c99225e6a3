// h2peer is an HTTP/2 peer that is not ours and not python-hyper's: Go's net/http,
// standard library only, speaking h2c (HTTP/2 with prior knowledge) on loopback.
//
// As a server (no arguments) it answers CONNECT by echoing the stream's bytes back
// until the client ends its side, and any other method by echoing the request body.
// It prints "listening HOST:PORT" once it accepts. A line on stdin drives it:
//
//	shutdown  graceful Server.Shutdown: GOAWAY, in-flight streams finish
//	close     Server.Close: GOAWAY, then the connections are closed at once
//
// It prints "shutdown done" or "close done" when that returns, and exits on EOF.
//
// As a client ("client HOST:PORT STREAMS CHUNKS") it opens STREAMS full-duplex POST
// streams at once on one connection; each sends CHUNKS chunks of 32 KiB, 50 ms
// apart, reads every byte echoed back, and prints "stream I ok BYTES" or
// "stream I failed: ERROR". Then it sends one more request ("after ok" or "after
// failed: ...": after a GOAWAY, Go's client opens a new connection for it).
package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
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

func client(addr string, streams, chunks int) {
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	c := &http.Client{Transport: &http.Transport{Protocols: &protocols}}
	url := "http://" + addr + "/"
	done := make(chan string, streams)
	for i := 0; i < streams; i++ {
		go func(i int) {
			reader, writer := io.Pipe()
			req, _ := http.NewRequest("POST", url, reader)
			go func() {
				chunk := make([]byte, 32*1024)
				for j := 0; j < chunks; j++ {
					for k := range chunk {
						chunk[k] = byte(i + j + k)
					}
					if _, err := writer.Write(chunk); err != nil {
						return
					}
					time.Sleep(50 * time.Millisecond)
				}
				writer.Close()
			}()
			resp, err := c.Do(req)
			if err != nil {
				done <- fmt.Sprintf("stream %d failed: %v", i, err)
				return
			}
			n, err := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err != nil {
				done <- fmt.Sprintf("stream %d failed: %v", i, err)
				return
			}
			done <- fmt.Sprintf("stream %d ok %d", i, n)
		}(i)
	}
	for i := 0; i < streams; i++ {
		fmt.Println(<-done)
	}
	resp, err := c.Post(url, "text/plain", strings.NewReader("after"))
	if err != nil {
		fmt.Printf("after failed: %v\n", err)
		return
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Printf("after ok %s\n", body)
}

func main() {
	if len(os.Args) == 5 && os.Args[1] == "client" {
		streams, _ := strconv.Atoi(os.Args[3])
		chunks, _ := strconv.Atoi(os.Args[4])
		client(os.Args[2], streams, chunks)
		return
	}
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
