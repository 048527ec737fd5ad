package agent

import (
	"sync"

	"github.com/drfs-project/drfs/internal/targets"
	"github.com/drfs-project/drfs/shipper"
	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/wrap"
)

// storeCache opens each target once: the VMs that replicate to one target
// share its store (a directory target has one writer: this process).
type storeCache struct {
	tls       targets.TLS
	bandwidth shipper.Bandwidth // upload limit per target; 0: none
	mu        sync.Mutex
	m         map[string]targets.Store
	limited   map[string]target.Store // the stores of m behind the limit
}

// shipping returns the store the shipper stages to url through: the
// store of get, behind the upload limit shared by every VM replicating
// there; nil when there is no limit.
func (c *storeCache) shipping(url string) (target.Store, error) {
	if c.bandwidth <= 0 {
		return nil, nil
	}
	s, err := c.get(url)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if l := c.limited[url]; l != nil {
		return l, nil
	}
	if c.limited == nil {
		c.limited = map[string]target.Store{}
	}
	l := wrap.RateLimit(s, int64(c.bandwidth))
	c.limited[url] = l
	return l, nil
}

func (c *storeCache) get(url string) (targets.Store, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.m[url]; s != nil {
		return s, nil
	}
	s, err := targets.Open(url, c.tls)
	if err != nil {
		return nil, err
	}
	if c.m == nil {
		c.m = map[string]targets.Store{}
	}
	c.m[url] = s
	return s, nil
}

func (c *storeCache) closeAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for url, s := range c.m {
		s.Close()
		delete(c.m, url)
		delete(c.limited, url)
	}
}
