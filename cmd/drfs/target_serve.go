package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/dirstore"
	"github.com/drfs-project/drfs/target/remote"
)

// targetCmd groups the commands of the recovery site.
type targetCmd struct {
	Serve targetServeCmd `cmd:"" help:"Serve a replica directory to source hosts over HTTPS with mutual TLS 1.3."`
}

type targetServeCmd struct {
	Dir      string        `required:"" placeholder:"DIR" type:"path" help:"Replica directory (must exist). Each source host gets its own store in DIR/<identity>, its identity being the subject CommonName of its client certificate."`
	Listen   string        `default:":8443" placeholder:"ADDR" help:"TCP address to listen on, host:port (default ${default})."`
	Cert     string        `required:"" placeholder:"FILE" type:"path" help:"Server certificate chain (PEM), which source hosts verify against their CA file."`
	Key      string        `required:"" placeholder:"FILE" type:"path" help:"Private key (PEM) of the server certificate."`
	ClientCA string        `name:"client-ca" required:"" placeholder:"FILE" type:"path" help:"CA certificates (PEM) that sign the source hosts' client certificates; nobody else gets in."`
	Shutdown time.Duration `default:"30s" help:"On SIGINT or SIGTERM, how long calls in progress may take to finish before they are cut."`
	logFlags
}

func (c *targetServeCmd) Run() error {
	log := c.startLog()
	if st, err := os.Stat(c.Dir); err != nil {
		return fmt.Errorf("replica directory %s: %v (create it first)", c.Dir, errors.Unwrap(err))
	} else if !st.IsDir() {
		return fmt.Errorf("replica directory %s is not a directory", c.Dir)
	}
	cert, err := remote.LoadCertificate(c.Cert, c.Key)
	if err != nil {
		return fmt.Errorf("server %w", err)
	}
	clientCAs, err := remote.LoadCertPool(c.ClientCA)
	if err != nil {
		return fmt.Errorf("client %w", err)
	}
	srv, err := remote.NewServer(remote.ServerOptions{
		Certificates: []tls.Certificate{cert},
		ClientCAs:    clientCAs,
		Open: func(identity string) (target.Store, error) {
			// The server has checked that identity is one safe path element.
			return dirstore.Open(filepath.Join(c.Dir, identity), dirstore.Options{})
		},
		Log: log,
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", c.Listen)
	if err != nil {
		var (
			se *os.SyscallError
			ae *net.AddrError
		)
		if errors.As(err, &se) {
			err = se.Err
		} else if errors.As(err, &ae) {
			err = errors.New(ae.Err)
		}
		return fmt.Errorf("listen on %s: %v", c.Listen, err)
	}
	log.Info("drfs target: serving", "dir", c.Dir, "addr", ln.Addr().String())

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return fmt.Errorf("serving on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	stop() // a second signal kills the process
	log.Info("drfs target: shutting down", "grace", c.Shutdown)
	sctx, cancel := context.WithTimeout(context.Background(), c.Shutdown)
	defer cancel()
	err = srv.Shutdown(sctx)
	<-served
	if err != nil {
		return fmt.Errorf("shutting down: %w", err)
	}
	log.Info("drfs target: stopped; stores closed cleanly")
	return nil
}
