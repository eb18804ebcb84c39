-- dmem's user commands. They act on the dmem client attached to the current buffer,
-- however it was started (vim.lsp.enable('dmem') or require('dmem').setup()).
if vim.g.loaded_dmem then
  return
end
vim.g.loaded_dmem = true

local function commands()
  return require('dmem.commands')
end

vim.api.nvim_create_user_command('DmemExplain', function(args)
  commands().explain(args.line1, args.line2)
end, { range = true, desc = 'dmem: explain the selected lines (markdown in a floating window)' })

vim.api.nvim_create_user_command('DmemRemember', function(args)
  commands().remember(args.line1, args.line2, args.args)
end, { range = true, nargs = '*', desc = 'dmem: remember the selected lines (or the text given) as a debug step' })

vim.api.nvim_create_user_command('DmemStatus', function()
  commands().status()
end, { desc = "dmem: the server's state and this workspace's memory" })

vim.api.nvim_create_user_command('DmemResetMemory', function(args)
  commands().reset(args.args ~= '' and args.args or nil, args.bang)
end, {
  nargs = '?',
  bang = true,
  complete = function(lead) -- the stores the server names for this buffer's memory
    return vim.tbl_filter(function(name)
      return vim.startswith(name, lead)
    end, commands().stores(vim.api.nvim_get_current_buf()))
  end,
  desc = "dmem: reset this workspace's memory (one store, or all); ! skips the question",
})

vim.cmd('highlight default link DmemGhost Comment')

-- 0.11+: vim.lsp.enable('dmem') skips a cmd that is not executable with a line in lsp.log
-- alone; say so where the user looks
if vim.lsp.is_enabled then
  vim.api.nvim_create_autocmd('FileType', {
    group = vim.api.nvim_create_augroup('dmem.cmd', { clear = true }),
    callback = function(event)
      if vim.lsp.is_enabled('dmem') and vim.bo[event.buf].buftype == '' and vim.api.nvim_buf_get_name(event.buf) ~= '' then
        local config = vim.lsp.config.dmem
        require('dmem').check_cmd(config and config.cmd)
      end
    end,
  })
end

if vim.g.dmem and vim.g.dmem.forward_diagnostics then
  require('dmem.forward').enable(true)
end
